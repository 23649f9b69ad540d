"""A lock counts only what the build installs: a pin whose marker (pip) or platform fields (npm)
let the consumer skip it does not lock a declared dependency. Proven with the consumers
themselves: real pip of each target Python version (offline, local wheels), pip's own marker
evaluator where the machine differs, npm-install-checks (what npm ci runs) and npm ci. And
whatever nesting a lock or a request file holds, the answer is a caller's error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from function.create import CreateService
from function.errors import BuildContextError
from function.settings import Settings
from function.stores import open_store
from tests.support.consumers import local_wheel, pip_would_install, python_for
from tests.support.contexts import read_member
from tests.support.server import FunctionServer

SHA = "a" * 64

# Markers of the only pin of a declared dependency, with {v} the target version.
SURELY = [
    'python_version >= "3.8"',
    'python_version == "{v}"',
    'python_full_version >= "3.9.0"',
    'sys_platform == "linux" and os_name == "posix"',
    'platform_system == "Linux" or platform_system == "Darwin"',
    'implementation_name == "cpython"',
    '"linux" in sys_platform',
    'python_full_version < "{v}.1" or python_full_version >= "{v}.1"',
]
NEVER = [
    'python_version < "3.0"',
    'python_version != "{v}"',
    'sys_platform == "win32"',
    'platform_system == "Darwin"',
    'implementation_name == "pypy"',
    'extra == "socks"',
]
"""False for every build of the target: pip prints 'Ignoring' and installs nothing."""
DEPENDS = [
    ('platform_machine == "x86_64"', {"platform_machine": "aarch64"}),
    ('platform_machine != "aarch64"', {"platform_machine": "aarch64"}),
    ('python_full_version >= "{v}.2"', {"python_full_version": "{v}.0"}),
    ('implementation_version < "{v}.5"', {"implementation_version": "{v}.7"}),
    ('platform_release >= "5.0"', {"platform_release": "4.19.0"}),
]
"""True on some builders, false on others (another machine, another patch release)."""
VERSIONS = ["3.11", "3.12", "3.13"]


def build(request: dict[str, Any], tmp_path: Path) -> Any:
    settings = Settings(fs_root=tmp_path / "store")
    return CreateService(settings, open_store("filesystem", settings)).build(request, "req-1")


def locked(dependencies: list[str], lock: str, version: str) -> dict[str, Any]:
    return {
        "lambdaFunction": "locked",
        "runtimeVersion": version,
        "sourceCode": "print(1)\n",
        "dependencies": dependencies,
        "lockFile": lock,
    }


def refusal(request: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(BuildContextError) as caught:
        build(request, tmp_path)
    assert caught.value.reason == "InvalidRequest", caught.value.message
    assert caught.value.errors[0].field == "lockFile"
    return caught.value.message


@pytest.mark.parametrize("version", VERSIONS)
def test_pip_of_the_target_installs_every_pin_we_accept_and_ignores_those_we_refuse(
    tmp_path: Path, version: str
) -> None:
    python = python_for(version)
    if python is None:
        pytest.skip(f"no Python {version} with pip here")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    names = [f"pkg{i}" for i in range(len(SURELY) + len(NEVER))]
    sums = {name: local_wheel(wheels, name, "1.0") for name in names}

    def line(name: str, marker: str) -> str:
        return f"{name}==1.0 ; {marker.format(v=version)} --hash=sha256:{sums[name]}\n"

    lock = "".join(line(n, m) for n, m in zip(names, SURELY, strict=False))
    built = build(locked([f"{n}>=1" for n in names[: len(SURELY)]], lock, version), tmp_path)
    assert built.valid.dependencies_locked
    requirements = read_member(built.archive.data, "requirements.txt")
    assert pip_would_install(python, requirements, wheels) == sorted(names[: len(SURELY)])

    refused = list(zip(names[len(SURELY) :], NEVER, strict=True))
    for name, marker in refused:
        message = refusal(locked([f"{name}>=1"], line(name, marker), version), tmp_path)
        assert f"is false for Python {version} on Linux" in message, message
        assert "pip ignores such a line" in message
    # pip of that version, given those lines as they are, installs none of them
    assert pip_would_install(python, "".join(line(n, m) for n, m in refused), wheels) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_pin_that_holds_on_some_builders_only_is_refused_and_pip_agrees_it_varies(
    tmp_path: Path, version: str
) -> None:
    from pip._vendor.packaging.markers import Marker as PipMarker

    here = {"python_version": version, "python_full_version": f"{version}.0", "extra": ""}
    for marker, elsewhere in DEPENDS:
        text = marker.format(v=version)
        other = {k: v.format(v=version) for k, v in elsewhere.items()}
        lock = f"requests==2.32.3 ; {text} --hash=sha256:{SHA}\n"
        message = refusal(locked(["requests>=2.31"], lock, version), tmp_path)
        assert "may not be installed" in message and f"runtimeVersion {version}" in message
        # pip's own evaluator: false on the other builder, so pip there would ignore the pin
        assert PipMarker(text).evaluate({**here, **other}) is False, marker
    # a declared dependency that itself applies only where its pin does is locked
    built = build(
        locked(
            ['requests>=2.31; platform_machine == "x86_64"'],
            f'requests==2.32.3 ; platform_machine == "x86_64" --hash=sha256:{SHA}\n',
            version,
        ),
        tmp_path,
    )
    assert built.valid.dependencies_locked


def test_a_marker_variable_older_pips_do_not_know_is_refused(tmp_path: Path) -> None:
    lock = (
        f'requests==2.32.3 --hash=sha256:{SHA}\nidna==3.7 ; "socks" in extras --hash=sha256:{SHA}\n'
    )
    message = refusal(locked(["requests>=2.31"], lock, "3.13"), tmp_path)
    assert "'extras', which is not a PEP 508 environment marker" in message
    assert "line 2" in message


def test_the_work_of_judging_markers_is_bounded_per_lock(tmp_path: Path) -> None:
    """Each marker below needs hundreds of cases; together they would need far more than the
    lock's budget, which ends the check with a refusal instead of seconds of work."""
    from function.runtimes.markers import MAX_CASES

    heavy = " and ".join(
        f'{name} != "{name[:3]}{i}"'
        for i in range(3)
        for name in ("platform_machine", "platform_release", "platform_version")
    )
    names = [f"pkg{i}" for i in range(60)]
    lock = "".join(f"{n}==1.0 ; {heavy} --hash=sha256:{SHA}\n" for n in names)
    dependencies = [f"{n}>=1; {heavy}" for n in names]
    message = refusal(locked(dependencies, lock, "3.13"), tmp_path)
    assert "cases to judge" in message and f"of {MAX_CASES} a lock" in message, message


# --- npm: what npm ci would skip, or fail on, in the image ---------------------------------

INTEGRITY = "sha512-" + "B" * 86 + "=="


def npm_lock(**entry: Any) -> str:
    return json.dumps(
        {
            "lockfileVersion": 3,
            "packages": {
                "": {"dependencies": {"ms": "^2.1.3"}},
                "node_modules/ms": {"version": "2.1.3", "integrity": INTEGRITY, **entry},
                "node_modules/fsevents": {
                    "version": "2.3.3",
                    "integrity": INTEGRITY,
                    "optional": True,
                    "os": ["darwin"],
                },
            },
        }
    )


def npm_request(lock: str) -> dict[str, Any]:
    return {
        "lambdaFunction": "locked",
        "runtime": "nodejs",
        "sourceCode": "require('ms');\n",
        "dependencies": {"ms": "^2.1.3"},
        "lockFile": lock,
    }


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"dev": True}, "is marked dev"),
        ({"optional": True}, "is marked optional"),
        ({"devOptional": True}, "is marked devOptional"),
        ({"peer": True}, "is marked peer"),
        ({"inBundle": True}, "is marked inBundle"),
        ({"os": ["darwin"]}, "excludes 'linux'"),
        ({"os": ["!linux"]}, "excludes 'linux'"),
        ({"cpu": ["x64"]}, "excludes 'arm64'"),
        ({"libc": ["musl"]}, "excludes 'glibc'"),
        ({"os": [["linux"]]}, "must be a list of names"),
    ],
)
def test_npm_a_direct_dependency_npm_ci_may_skip_is_refused(
    tmp_path: Path, entry: dict[str, Any], problem: str
) -> None:
    assert problem in refusal(npm_request(npm_lock(**entry)), tmp_path)


def test_npm_platform_fields_are_kept_so_npm_ci_skips_what_it_would(tmp_path: Path) -> None:
    built = build(npm_request(npm_lock(os="linux", cpu=["x64", "arm64"])), tmp_path)
    packages = json.loads(read_member(built.archive.data, "package-lock.json"))["packages"]
    assert packages["node_modules/fsevents"]["os"] == ["darwin"]
    assert packages["node_modules/ms"]["os"] == ["linux"]


NPM_CHECK = r"""
const { checkPlatform } = require(process.argv[1]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map(([value, list]) => {
  try { checkPlatform({ os: list }, false, { os: value, cpu: "x64", libc: "glibc" }); return true; }
  catch (e) { return false; }
})));
"""


def test_npm_admits_as_npm_install_checks_does() -> None:
    """Our reading of an os/cpu/libc list against npm-install-checks, the module npm ci calls."""
    from function.runtimes.npm_lock import npm_admits

    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, check=True)
    module = Path(root.stdout.strip()) / "npm" / "node_modules" / "npm-install-checks"
    if not module.exists():
        pytest.skip("npm's own npm-install-checks is not where npm keeps it")
    lists = [["linux"], ["darwin"], ["!linux"], ["!win32"], ["!win32", "darwin"], ["any"],
             ["any", "darwin"], ["linux", "!linux"], ["!darwin", "!win32"], ["x64"],
             ["!arm64", "x64"], ["glibc"], ["musl"]]  # fmt: skip
    cases = [(value, entry) for value in ("linux", "x64", "arm64", "glibc") for entry in lists]
    result = subprocess.run(
        ["node", "-e", NPM_CHECK, str(module)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
    )
    assert [npm_admits(value, entry) for value, entry in cases] == json.loads(result.stdout)


@pytest.mark.slow
def test_npm_ci_skips_an_optional_package_for_another_platform_as_with_the_callers_lock(
    tmp_path: Path,
) -> None:
    """chokidar pulls fsevents (optional, macOS only): npm ci on Linux leaves it out with the
    caller's lock, and so with ours (which once dropped `os`, and installed it)."""
    project = tmp_path / "project"
    project.mkdir()
    dependencies = {"chokidar": "3.6.0"}
    (project / "package.json").write_text(json.dumps({"dependencies": dependencies}))
    npm_env = {**os.environ, "npm_config_cache": str(tmp_path / "npm-cache")}
    npm = ["--ignore-scripts", "--no-audit", "--no-fund"]
    subprocess.run(
        ["npm", "install", "--package-lock-only", *npm], cwd=project, env=npm_env, check=True
    )
    lock = (project / "package-lock.json").read_text()
    built = build({**npm_request(lock), "dependencies": dependencies}, tmp_path)
    context = tmp_path / "context"
    context.mkdir()
    for name in ("package.json", "package-lock.json"):
        (context / name).write_text(read_member(built.archive.data, name))
    subprocess.run(
        ["npm", "ci", "--omit=dev", *npm], cwd=context, env=npm_env, check=True, capture_output=True
    )
    assert (context / "node_modules" / "chokidar").is_dir()
    assert not (context / "node_modules" / "fsevents").exists()


# --- nesting: a caller's error from every parser of request content -----------------------


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_a_package_lock_nested_past_the_parser_is_invalid_request_over_http(
    server: FunctionServer, depth: int
) -> None:
    for nested in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        reply = server.send({**npm_request(nested), "lambdaFunction": "deep"})
        assert reply.type == "buildcontext.failed", reply
        assert reply.data["reason"] == "InvalidRequest", reply
        assert "nests too deeply" in reply.data["message"], reply


def test_markers_nested_past_the_parser_are_invalid_request(tmp_path: Path) -> None:
    deep = "(" * 5000 + 'python_version >= "3"' + ")" * 5000
    for dependencies, lock in [
        (["requests>=2.31"], f"requests==2.32.3 ; {deep} --hash=sha256:{SHA}\n"),
        ([f"requests>=2.31; {deep}"], f"requests==2.32.3 --hash=sha256:{SHA}\n"),
    ]:
        with pytest.raises(BuildContextError) as caught:
            build(locked(dependencies, lock, "3.13"), tmp_path)
        assert caught.value.reason == "InvalidRequest", caught.value.message


@pytest.mark.parametrize(
    "content",
    ["[" * 100_000, '{"lambdaFunction": ' + "9" * 5000 + "}", '["a list"]', "{", "\udcff"],
    ids=["deep", "5000-digits", "not-an-object", "truncated", "not-utf-8"],
)
def test_the_cli_answers_a_request_file_it_cannot_read_in_one_line(
    tmp_path: Path, content: str
) -> None:
    request = tmp_path / "request.json"
    request.write_bytes(content.encode("utf-8", "surrogateescape"))
    commands = [["create", "--request", str(request)]]
    if content != '["a list"]':  # any JSON is event data to send
        commands.append(["send", "http://127.0.0.1:9/", "--data", str(request)])
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "function", *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
        assert "cannot read" in done.stderr
