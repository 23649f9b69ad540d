"""What the validators accept, the real consumers read back as the same thing: npm's spec
parser (npm-package-arg, run with node), pip's requirements-file reader, `go mod edit -json`
and CPython. Refused inputs are shown to be read otherwise by the consumer, where they are."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from function.errors import BuildContextError
from function.settings import Settings
from function.validation import parse, validate
from tests.support.consumers import go_mod_reads, npm_reads, pip_reads, python_compiles

SETTINGS = Settings()

NPM_SPECS = [
    "^1.2.3",
    "~1.2",
    "1.x",
    "1.2.x",
    "*",
    "x",
    ">=1.0.0 <2.0.0",
    "1.2.3 - 2.3.4",
    "^1 || ^2",
    "1.0.0-rc.1",
    "v1.2.3",
    "=1.2.3",
    "<1",
    ">=0.1.0-beta.2",
    "1.2.3+build.5",
    "~0.0.1",
    "1.0.0-a.tgz",
    "1.0.0-x.tar.gz",
    "latest",
    "next",
    "file:../x",
    "git+https://h/x.git",
    "npm:left-pad@1",
    "github:a/b",
    "a/b",
    " 1.0.0",
    "1.0.0 ",
    "1.0.0\n",
    "",
    "^1.2.3 ||",
    "1.2.3-",
    "./x",
    "~/x",
    "http://h/x.tgz",
    "1.0.0-a.TAR",
    "1 - 2 - 3",
    "^01.2.3",
]
NPM_NAMES = ["left-pad", "@scope/pkg", "pkg.js", "a_b", "~tilde", "UPPER", "a b", ".dot", "_x"]

PIP_REQUIREMENTS = [
    "requests",
    "requests>=2.31",
    "requests[socks]>=2,<3",
    'requests; python_version >= "3.8"',
    "Django==4.2.*",
    "a-b.c_d",
    "requests ==2.31",
    "requests (>=2.31)",
    "x; platform_machine=='x86_64'",
    "numpy>=1.26; python_version>='3.9' and os_name=='posix'",
    'x; os_name == "a #b"',
    'x; os_name == "a\fb"',
    'x; os_name == "a\vb"',
    'x; os_name == "a\u2028b"',
    'x; os_name == "a\x1cb"',
    'x; os_name == "${HOME}"',
    'x; os_name == "a --hash=b"',
    'x; os_name == "a -b"',
    'x; os_name == "a-b"',
    "x #comment",
    "x\t>=1",
    "x>=1 \\",
    "-e .",
    "--index-url=https://h",
    "x @ https://h/x.whl",
]

GO_SPECS = [
    "github.com/google/uuid@v1.6.0",
    "github.com/foo/bar/v2@v2.1.0",
    "gopkg.in/yaml.v3@v3.0.1",
    "github.com/foo/bar@v2.0.0+incompatible",
    "golang.org/x/mod@v0.20.0",
    "github.com/foo/bar@v2.0.0",
    "github.com/foo/bar/v2@v3.0.0",
    "github.com/foo/bar@v1.0.0+meta",
    "gopkg.in/yaml.v2@v3.0.0",
    "github.com/foo/CON@v1.0.0",
    "github.com/foo/bar/v1@v1.0.0",
    "github.com/foo/bar@v1.0",
    "github.com/Foo/bar@v1.0.0",
    "example.com/a~1@v1.0.0",
    "github.com/foo/bar@v1.0.0-rc.1",
    "github.com/foo/bar/v2@v2.0.0+incompatible",
]


def accepted(data: dict[str, Any]) -> Any:
    try:
        return validate(parse(data), SETTINGS)
    except BuildContextError:
        return None


def test_npm_package_arg_reads_every_accepted_dependency_as_the_same_registry_range() -> None:
    pairs = [(n, s) for n in NPM_NAMES for s in NPM_SPECS[:4]]
    pairs += [("left-pad", s) for s in NPM_SPECS]
    kept = []
    for name, spec in pairs:
        valid = accepted(
            {
                "lambdaFunction": "fix",
                "runtime": "nodejs",
                "sourceCode": "1;\n",
                "dependencies": {name: spec},
            }
        )
        if valid is not None:
            rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
            kept.append(((name, spec), valid, rendered))
    assert kept, "the corpus has accepted specs"

    reads = npm_reads([pair for pair, _, _ in kept])
    for (pair, _valid, rendered), read in zip(kept, reads, strict=True):
        dependencies = json.loads(rendered.manifests["package.json"])["dependencies"]
        assert dependencies == {pair[0]: pair[1]}
        assert read["type"] in ("range", "version"), (pair, read)
        assert (read["name"], read["rawSpec"]) == pair, (pair, read)
    # and the classes the issue found are read otherwise by npm: refused for a reason
    others = npm_reads([("left-pad", "1.0.0-a.tgz"), ("left-pad", "latest")])
    assert [o["type"] for o in others] == ["file", "tag"]


def test_npm_agrees_on_every_generated_range_we_accept() -> None:
    """A differential over generated ranges (fixed seed): every one we accept, npm reads as a
    registry range or version. It found '1.x.0' and '*.1', which npm reads as tags."""
    rng = random.Random(11)
    parts = ["0", "1", "01", "x", "X", "*", "10"]
    tails = ["", "-0", "-01", "-a", "-a.1", "-0a", "-x.tgz", "+b.01", "-a+b", "-", "+"]
    ops = ["", "^", "~", ">", ">=", "<", "<=", "=", "v", "^v", "~>", "=v"]

    def version() -> str:
        count = rng.randint(1, 3)
        text = ".".join(rng.choice(parts) for _ in range(count))
        return text + (rng.choice(tails) if count == 3 else "")

    candidates = set()
    for _ in range(4000):
        spec = rng.choice(ops) + version()
        shape = rng.random()
        if shape < 0.2:
            spec = f"{rng.choice(['', 'v'])}{version()} - {rng.choice(['', 'v'])}{version()}"
        elif shape < 0.4:
            spec += f" || {rng.choice(ops)}{version()}"
        elif shape < 0.5:
            spec += f" {rng.choice(ops)}{version()}"
        candidates.add(spec)
    kept = sorted(c for c in candidates if accepted(
        {"lambdaFunction": "fix", "runtime": "nodejs", "sourceCode": "1;\n",
         "dependencies": {"left-pad": c}}
    ) is not None)  # fmt: skip
    assert len(kept) > 100
    reads = npm_reads([("left-pad", spec) for spec in kept])
    wrong = [
        (s, r)
        for s, r in zip(kept, reads, strict=True)
        if r.get("type") not in ("range", "version")
    ]
    assert not wrong


def test_pip_reads_every_accepted_requirement_line_as_written() -> None:
    from packaging.requirements import Requirement

    kept = []
    for requirement in PIP_REQUIREMENTS:
        valid = accepted(
            {"lambdaFunction": "fix", "sourceCode": "print(1)\n", "dependencies": [requirement]}
        )
        if valid is not None:
            kept.append((requirement, valid))
    assert len(kept) >= 8
    for requirement, valid in kept:
        rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
        read = pip_reads(rendered.manifests["requirements.txt"])
        assert [str(Requirement(r)) for r in read] == [str(Requirement(requirement))], requirement
    # what packaging alone accepts but pip reads otherwise
    assert pip_reads('x; os_name == "a #b"\n') == ['x; os_name == "a']
    assert len(pip_reads('x; os_name == "a\fb"\n')) != 1 or pip_reads('x; os_name == "a\fb"\n') != [
        'x; os_name == "a\fb"'
    ]


def test_go_reads_every_accepted_module_version_from_the_rendered_go_mod() -> None:
    refused_by_go = 0
    for spec in GO_SPECS:
        module, _, version = spec.rpartition("@")
        valid = accepted(
            {
                "lambdaFunction": "fix",
                "runtime": "go",
                "dependencies": [spec],
                "sourceCode": "package main\n\nfunc main() {}\n",
            }
        )
        go_mod = f"module remediation\n\ngo 1.26\n\nrequire {module} {version}\n"
        try:
            go_read = go_mod_reads(go_mod)
        except ValueError:
            go_read = None
        if valid is None:
            refused_by_go += go_read is None
            continue
        rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
        assert go_mod_reads(rendered.manifests["go.mod"]) == [(module, version)], spec
    assert refused_by_go >= 4, "the go command itself refuses the major-version mismatches"


def test_pip_agrees_on_every_generated_requirement_we_accept() -> None:
    """A differential over generated requirements with hostile marker strings (fixed seed)."""
    from packaging.requirements import Requirement

    rng = random.Random(5)
    alphabet = list("abc -#;$\\{}=<>!~.*,()[]'\"@:/\t\f\v\x85\u2028\u00e9\n")
    kept = 0
    for _ in range(1500):
        text = (
            rng.choice(["requests", "a-b.c_d", "x", "Foo"])
            + rng.choice(["", "[socks]", "[a,b]"])
            + rng.choice(["", ">=1", "==2.*", " (>=1,<2)", "~=1.0", "!=1.5", "===1"])
        )
        if rng.random() < 0.7:
            quote = rng.choice(['"', "'"])
            noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            text += f"{rng.choice(['; ', ' ; ', ';'])}os_name == {quote}{noise}{quote}"
        text += rng.choice(["", " ", "\\"])
        valid = accepted(
            {"lambdaFunction": "fix", "sourceCode": "print(1)\n", "dependencies": [text]}
        )
        if valid is None:
            continue
        kept += 1
        rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
        read = pip_reads(rendered.manifests["requirements.txt"])
        assert [str(Requirement(r)) for r in read] == [d for _, d in valid.dependencies], text
    assert kept > 200


def test_go_agrees_on_every_generated_module_version_we_accept() -> None:
    """A differential over generated module@version (fixed seed): `go mod edit -json` reads
    every go.mod we would write. It found prerelease ids with leading zeros ('v1.0.0-01')."""
    rng = random.Random(4)
    elements = [
        "a", "b.v2", "v2", "v1", "v0", "v3", "yaml.v3", "x~1", "CON", "-x", "x-", "a.b", "A",
        "_u", "v02", "yaml.v2-unstable", "a..b", "x.", "~", "aux1",
    ]  # fmt: skip
    versions = [
        "v1.0.0", "v2.0.0", "v2.0.0+incompatible", "v0.1.0", "v3.1.0", "v1.0.0-rc.1",
        "v1.0.0-01", "v2.1.0-beta+incompatible", "v10.0.0", "v1.0.0-0a", "v1.0.0-a..b",
    ]  # fmt: skip
    kept = 0
    for _ in range(300):
        path = rng.choice(["github.com", "gopkg.in", "example.com", "Example.com"])
        path += "".join("/" + rng.choice(elements) for _ in range(rng.randint(1, 3)))
        spec = f"{path}@{rng.choice(versions)}"
        valid = accepted(
            {"lambdaFunction": "fix", "runtime": "go", "dependencies": [spec],
             "sourceCode": "package main\n\nfunc main() {}\n"}
        )  # fmt: skip
        if valid is None:
            continue
        kept += 1
        rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
        assert go_mod_reads(rendered.manifests["go.mod"]) == list(valid.dependencies), spec
    assert kept > 20


@pytest.mark.parametrize(
    ("source", "accept"),
    [
        ("print(1)\n", True),
        ("\ufeffprint(1)\n", True),
        ("# coding: utf-8\nprint('é')\n", True),
        ("# coding: bogus\nx = 1\n", False),
        # CPython compiles this one, but reads the stored UTF-8 as other text than was checked
        ("# -*- coding: latin-1 -*-\nx = 'é'\n", False),
        ("x = " + "-" * 100_000 + "1\n", False),
        ("x = (\n", False),
        ("\ufeff# coding: latin-1\nx = 1\n", False),
    ],
    ids=["plain", "bom", "utf8-cookie", "bogus", "latin1", "deep", "broken", "bom-latin1"],
)
def test_cpython_compiles_every_accepted_python_file_as_stored(source: str, accept: bool) -> None:
    valid = accepted({"lambdaFunction": "fix", "sourceCode": source})
    assert (valid is not None) is accept, source[:40]
    if accept:
        assert python_compiles(source.encode("utf-8")), source[:40]
