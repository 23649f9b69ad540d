"""Property test of the input boundary: generated hostile requests (any Unicode, control
characters, deep nesting, oversized ids) through the real validation, rendering, store and
reply rendering (parliament's Flask app, and the real HTTP server for a sample).

Invariants: no InternalError, retryable failure or 5xx for caller input; no CR, LF or
non-Latin-1 in any reply header; nothing stored after a failure; whatever is created is read
back by its consumers (pip, npm-package-arg, go, CPython) as validated. Generated `files` trees
are refused (InvalidSource) exactly when two paths clash, else packed with every name once and
no file under a file; and `verify`, given any archive and envelope the store could hold, answers
with one line and a documented exit code, never a traceback.

The normal suite runs a fixed seed with a small budget. A long, randomised run:

    BUILD_CONTEXT_FUZZ_EXAMPLES=2000 scripts/fuzz
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from function import server as function_server
from function.app import App
from function.settings import Settings
from function.telemetry import NOOP
from tests.support.consumers import go_mod_reads, npm_reads, pip_reads, python_compiles
from tests.support.server import FunctionServer, encode

EXAMPLES = int(os.environ.get("BUILD_CONTEXT_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=EXAMPLES or 60,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
CALLER_REASONS = {"InvalidRequest", "InvalidSource", "UnsupportedRuntime", "ContextTooLarge"}

# Strings an attacker would try: near-valid values with one hostile twist, and noise.
HOSTILE = st.sampled_from(["\n", "\r\n", "\u2603", "\u00e9"]) | st.sampled_from(
    ["\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u00e9", "\u2603", " #",
     "${HOME}", "\\", "/", "..", "@", ":", "\ufeff", "\U0001f600", " ", "\t", "'", '"']
)  # fmt: skip
NEAR = st.sampled_from(
    ["fix", "a" * 63, "a" * 64, "default", "requests>=2.31", "left-pad", "^1.2.3",
     "1.0.0-a.tgz", "github.com/google/uuid", "v1.6.0", "v2.0.0", "python", "nodejs", "go",
     "3.11", "3.13", "24", "1.26", "go.work", "lib/util.py", "INC-1"]
)  # fmt: skip


def twisted(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        base,
        st.tuples(base, HOSTILE, st.sampled_from(["start", "end", "middle"])).map(
            lambda t: t[1] + t[0] if t[2] == "start" else t[0] + t[1] if t[2] == "end" else
            t[0][: len(t[0]) // 2] + t[1] + t[0][len(t[0]) // 2 :]
        ),
        st.text(max_size=80),
        st.text(st.characters(codec="ascii"), max_size=40),
        base.map(lambda s: s * 500),
    )  # fmt: skip


TEXT = twisted(NEAR)
SOURCES = {
    "python": st.sampled_from(
        ["print(1)\n", "x = " + "-" * 50_000 + "1\n", "\ufeffprint(1)\n", "# coding: bogus\n",
         'x = f"{"a"}"\n', "", "def f(:\n", "x = a" + ".b" * 100_000 + "\n"]
    ),
    "nodejs": st.sampled_from(
        ["console.log(1);\n", "let x = " + "[" * 3000 + "]" * 3000 + ";\n", "let = ;\n", ""]
    ),
    "go": st.sampled_from(
        ["package main\n\nfunc main() {}\n", "package lib\n", "package main\nfunc main() {",
         "package main\n\nfunc main() { _ = " + "(" * 3000 + "1" + ")" * 3000 + " }\n"]
    ),
}  # fmt: skip


VALID: dict[str, dict[str, Any]] = {
    "python": {"sourceCode": "print(1)\n", "dependencies": ["requests>=2.31"]},
    "nodejs": {"sourceCode": "console.log(1);\n", "dependencies": {"left-pad": "^1.3.0"}},
    "go": {
        "sourceCode": "package main\n\nfunc main() {}\n",
        "dependencies": ["github.com/google/uuid@v1.6.0"],
    },
}
FIELDS = [
    "lambdaFunction", "runtime", "runtimeVersion", "sourceCode", "metadata", "files",
    "namespace", "owner", "dependencies", "id", "source", "shape",
]  # fmt: skip


@st.composite
def requests_(draw: st.DrawFn) -> tuple[Any, dict[str, str]]:
    """A valid request of one runtime with a few of its fields (or the event id, source or
    the data's shape) made hostile, so that both outcomes are explored."""
    runtime = draw(st.sampled_from(["python", "nodejs", "go"]))
    # values that reach reply headers, records and logs come up more often
    hostile = draw(
        st.sets(st.sampled_from(FIELDS + ["lambdaFunction", "id", "source"] * 3), max_size=2)
    )
    data: dict[str, Any] = {
        "lambdaFunction": "fix",
        "runtime": runtime,
        "metadata": {"ticket": "INC-1"},
        **VALID[runtime],
    }
    if draw(st.booleans()):
        data["sourceCode"] = f"{data['sourceCode']}// {draw(st.uuids())}\n".replace(
            "// ", "# " if runtime == "python" else "// "
        )
    for field in hostile & {"lambdaFunction", "runtime", "runtimeVersion", "namespace"}:
        data[field] = draw(TEXT)
    if "sourceCode" in hostile:
        data["sourceCode"] = draw(st.one_of(SOURCES[runtime], st.text(max_size=200)))
    if "metadata" in hostile:
        data["metadata"] = draw(st.dictionaries(TEXT, TEXT, max_size=4))
    if "files" in hostile:
        data["files"] = draw(st.dictionaries(TEXT, st.text(max_size=50), max_size=3))
    if "owner" in hostile:
        data["owner"] = {
            "apiVersion": draw(st.one_of(st.just("lambda.knative.io/v1alpha1"), TEXT)),
            "kind": draw(st.one_of(st.just("LambdaFunction"), TEXT)),
            "name": draw(st.one_of(st.just("fix"), TEXT)),
            "uid": draw(st.one_of(st.uuids().map(str), TEXT)),
        }
    if "dependencies" in hostile:
        if runtime == "nodejs":
            data["dependencies"] = draw(st.dictionaries(TEXT, TEXT, max_size=3))
        else:
            data["dependencies"] = draw(st.lists(TEXT, max_size=3))
    identity = {"id": str(draw(st.uuids())), "source": "/agent"}
    for field in hostile & {"id", "source"}:
        identity[field] = draw(TEXT)
    shaped: Any = data
    if "shape" in hostile:
        depth = draw(st.integers(1, 900))
        shaped = draw(
            st.sampled_from([{"x": data}, [data], "text", None, data | {"ttlSeconds": 10**50}])
        )
        shaped = {"metadata": json.loads("[" * depth + "]" * depth)} if depth > 800 else shaped
    return shaped, identity


@pytest.fixture(scope="module")
def flask_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("fuzz") / "contexts"
    app = App.from_settings(Settings(fs_root=root), telemetry=NOOP)
    gate, _ = function_server.wsgi_app(app)
    from werkzeug.test import Client

    yield Client(gate), root
    app.close()


def caller_reason(reply: dict[str, Any]) -> bool:
    """A caller's reason; or a namespace outside the allow-list, which the contract answers
    StorageForbidden (not retryable) since it is the operator's policy that refuses it."""
    if reply["retryable"]:
        return False
    return reply["reason"] in CALLER_REASONS or (
        reply["reason"] == "StorageForbidden" and reply["message"].startswith("namespace:")
    )


def stored_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def check_headers(headers: Any) -> None:
    for name, value in headers:
        assert "\r" not in value and "\n" not in value, (name, value[:80])
        value.encode("latin-1")  # raises on anything else


def check_consumers(reply: dict[str, Any], archive: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        files = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    runtime = reply["runtime"]
    if runtime == "python":
        wanted = [
            line for line in files["requirements.txt"].decode().splitlines()
            if line and not line.startswith("#")
        ]  # fmt: skip
        read = pip_reads(files["requirements.txt"].decode())
        assert [str(Requirement(r)) for r in read] == wanted
        assert python_compiles(files["remediation.py"]) or reply["warnings"]
    elif runtime == "nodejs":
        npm_dependencies: dict[str, str] = json.loads(files["package.json"])["dependencies"]
        for (name, spec), npm_read in zip(
            npm_dependencies.items(), npm_reads(list(npm_dependencies.items())), strict=True
        ):
            assert npm_read["type"] in ("range", "version"), (name, npm_read)
            assert npm_read["rawSpec"] == spec, (name, npm_read)
    else:
        go_mod_reads(files["go.mod"].decode())


@FUZZ
@given(requests_())
def test_generated_requests_through_the_real_app(
    flask_app: tuple[Any, Path], request: tuple[Any, dict[str, str]]
) -> None:
    client, root = flask_app
    data, identity = request
    before = stored_files(root)
    body = json.dumps(
        {
            "specversion": "1.0",
            "type": "remediation.buildcontext.requested",
            "datacontenttype": "application/json",
            "data": data,
            **identity,
        }
    )
    response = client.post("/", data=body, headers={"Content-Type": "application/cloudevents+json"})
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    check_headers(response.headers.items())
    if response.status_code != 200:
        assert stored_files(root) == before
        return
    reply = response.get_json()
    kind = response.headers["ce-type"]
    if kind == "buildcontext.failed":
        assert caller_reason(reply), reply
        assert reply["retryable"] is False
        assert len(response.get_data()) < 64 * 1024
        for message in [reply["message"], *(e["message"] for e in reply.get("errors", []))]:
            assert len(message) < 1000 and "\n" not in message, message[:200]
        assert stored_files(root) == before
        return
    assert kind == "buildcontext.created"
    check_consumers(reply, Path(reply["storage"]["path"]).read_bytes())


@settings(
    max_examples=max(EXAMPLES // 10, 12),
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(requests_(), st.booleans())
def test_generated_requests_through_the_real_http_server(
    fuzz_server: FunctionServer, request: tuple[Any, dict[str, str]], structured: bool
) -> None:
    data, identity = request
    if not structured and not all(" " <= c <= "~" for c in identity["id"] + identity["source"]):
        structured = True  # an HTTP client cannot put these in a header at all
    headers, body = encode(data, id=identity["id"], structured=structured)
    if structured:
        envelope = json.loads(body)
        envelope["source"] = identity["source"]
        body = json.dumps(envelope).encode()
    else:
        headers["ce-source"] = identity["source"]
    response = fuzz_server.session.post(fuzz_server.url, headers=headers, data=body, timeout=60)
    assert response.status_code < 500, response.text[:500]
    check_headers(response.raw.headers.items())
    if response.status_code == 200 and response.headers.get("ce-type") == "buildcontext.failed":
        assert caller_reason(response.json())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionServer]:
    server = FunctionServer({}, tmp_path_factory.mktemp("fuzz-http")).start()
    yield server
    server.stop()


# --- credentials: never repeated, findings bounded (issue 21) ---------------------------------

ALNUM_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SECRET = st.lists(
    st.tuples(st.sampled_from(ALNUM_CHARS[:52]), st.sampled_from(ALNUM_CHARS[52:])),
    min_size=8,
    max_size=20,
).map(lambda pairs: "".join(a + b for a, b in pairs))
"""Letters and digits alternating: no 8 characters of it can be a word of our own messages."""
CREDENTIAL_SHAPES = ["AKIA{S16}", "ghp_{s36}", "postgres://app:{s}@db/app", "x = 1", "{s}"]
CREDENTIAL_IN = st.sampled_from(
    ["https://user:{s}@host/x", "deploy:{s}@git.example.com/m@v1.0.0",
     "git+https://{s}@github.com/o/r.git", "--index-url https://h/{s}/simple",
     "--extra-index-url={s}", "https://h/p?x=1&access_token={s}", "?X-Amz-Signature={s}",
     "ghp_{s36}", "AKIA{S16}", "xoxb-123456789012-{s}", "postgres://app:{s}@db/app"]
)  # fmt: skip


def _with_secret(template: str, secret: str) -> str:
    padded = (secret * 3)[:36]
    return template.format(s=secret, s36=padded, S16=padded.upper()[:16])


def _leaks(secret: str, text: str) -> bool:
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


@FUZZ
@given(st.text(max_size=120), CREDENTIAL_IN, SECRET, st.text(max_size=60), st.integers(1, 200))
def test_a_quote_never_keeps_a_credential(
    before: str, template: str, secret: str, after: str, limit: int
) -> None:
    from function import boundary

    assume(not _leaks(secret[:36], f"{before} {template} {after}"))
    text = f"{before} {_with_secret(template, secret)} {after}"
    for shown in (boundary.quote(text, limit), boundary.escaped(text, limit)):
        assert not _leaks(secret[:36], shown), (text, shown)


@FUZZ
@given(
    st.sampled_from(["dependencies", "metadata-value", "metadata-key", "lambdaFunction", "lock"]),
    CREDENTIAL_IN,
    SECRET,
    st.text(max_size=40),
)
def test_a_secret_anywhere_in_a_request_never_comes_back(
    flask_app: tuple[Any, Path], field: str, template: str, secret: str, noise: str
) -> None:
    import logging

    from function.telemetry.logs import JsonFormatter

    client, _ = flask_app
    assume(not _leaks(secret[:36], f"{noise} {template} fix print(1) requests==2.32.3"))
    value = f"{noise} {_with_secret(template, secret)}"
    data: dict[str, Any] = {"lambdaFunction": "fix", "sourceCode": "print(1)\n"}
    if field == "dependencies":
        data["dependencies"] = [f"pkg @ {value}"]
    elif field == "metadata-value":
        data["metadata"] = {"ticket": value[:1000]}
    elif field == "metadata-key":
        data["metadata"] = {value[:63]: "x"}
    elif field == "lambdaFunction":
        data["lambdaFunction"] = value
    else:
        data["dependencies"] = ["requests>=2.31"]
        data["lockFile"] = f"{value}\nrequests==2.32.3 --hash=sha256:{'a' * 64}\n"
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        body = json.dumps(
            {"specversion": "1.0", "type": "remediation.buildcontext.requested", "id": "1",
             "source": "/agent", "datacontenttype": "application/json", "data": data}
        )  # fmt: skip
        response = client.post(
            "/", data=body, headers={"Content-Type": "application/cloudevents+json"}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    reply = response.get_data(as_text=True)
    if response.headers.get("ce-type") == "buildcontext.created":
        return  # not refused: nothing quoted (a lone token shape in a name is just a name)
    assert not _leaks(secret[:36], reply), reply[:500]
    assert not _leaks(secret[:36], "\n".join(lines))


@FUZZ
@given(st.lists(st.sampled_from(CREDENTIAL_SHAPES), max_size=300), st.integers(0, 3))
def test_findings_are_bounded_whatever_their_number(lines: list[str], files: int) -> None:
    from function import credentials
    from function.errors import MAX_ERRORS, InvalidSource
    from function.secret_scan import check_credentials

    text = "".join(
        f"V{i} = '{_with_secret(line, 'Zx8Kq2LmN4pR7sT1vW3y')}'\n" for i, line in enumerate(lines)
    )
    sources = {f"f{n}.py": text for n in range(files + 1)}
    found = credentials.scan(sources)
    assert len(found.findings) <= credentials.MAX_FINDINGS
    assert found.total >= len(found.findings)
    try:
        check_credentials(sources, Settings(), lambda path: path)
    except InvalidSource as refused:
        assert len(refused.errors) <= MAX_ERRORS
        assert refused.omitted == found.total - len(refused.errors)
        assert len(refused.message) < 1000


# --- locks: a pin counts only where pip installs it; any nesting is a caller's error --------

MARKER_VARIABLES = st.sampled_from(
    ["python_version", "python_full_version", "implementation_version", "platform_machine",
     "platform_release", "platform_version", "sys_platform", "os_name", "platform_system",
     "implementation_name", "platform_python_implementation", "extra"]
)  # fmt: skip
MARKER_OPS = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "~=", "===", "in", "not in"])
MARKER_VALUES = st.sampled_from(
    ["3", "3.0", "3.11", "3.12", "3.13", "3.14", "3.13.0", "3.13.1", "3.13.*", "3.12.4", "",
     "linux", "Linux", "posix", "cpython", "CPython", "win32", "x86_64", "aarch64", "arm",
     "6.1.0", "5", "socks", "nt"]
)  # fmt: skip


@st.composite
def markers_(draw: st.DrawFn, depth: int = 0) -> str:
    if depth < 3 and draw(st.integers(0, 3)) == 0:
        joined = draw(st.sampled_from([" and ", " or "]))
        return f"({draw(markers_(depth + 1))}{joined}{draw(markers_(depth + 1))})"
    variable, op, value = draw(MARKER_VARIABLES), draw(MARKER_OPS), draw(MARKER_VALUES)
    if draw(st.booleans()):
        return f'{variable} {op} "{value}"'
    return f'"{value}" {op} {variable}'


def pip_installs(marker: str, version: str, machine: str, patch: int) -> bool:
    """What pip's own evaluator says on a builder of `version` (Linux), `machine` and `patch`:
    a false marker, or one it cannot evaluate, installs nothing."""
    from pip._vendor.packaging.markers import Marker as PipMarker

    environment = {
        "python_version": version,
        "python_full_version": f"{version}.{patch}",
        "implementation_version": f"{version}.{patch}",
        "platform_machine": machine,
        "extra": "",
    }
    try:
        return bool(PipMarker(marker).evaluate(environment))
    except Exception:
        return False


@FUZZ
@given(markers_(), st.sampled_from(["3.11", "3.12", "3.13", "3.14"]))
def test_a_pin_locks_a_dependency_only_where_pip_installs_it(marker: str, version: str) -> None:
    from function.errors import BuildContextError
    from function.validation import parse, validate

    request = {
        "lambdaFunction": "fix",
        "runtimeVersion": version,
        "sourceCode": "print(1)\n",
        "dependencies": ["requests>=2.31"],
        "lockFile": f"requests==2.32.3 ; {marker} --hash=sha256:{'a' * 64}\n",
    }
    try:
        valid = validate(parse(request), Settings())
    except BuildContextError as error:
        assert error.reason == "InvalidRequest", error.message
        return
    assert valid.dependencies_locked
    for machine in ("x86_64", "aarch64"):
        for patch in (0, 1, 2, 9):
            assert pip_installs(marker, version, machine, patch), (marker, machine, patch)


NESTED = st.recursive(
    st.none() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@FUZZ
@given(
    st.sampled_from(["python", "nodejs", "go"]),
    st.integers(1, 200_000),
    st.sampled_from(["[", '{"a":', '{"packages":{"":', "(", '["', "{"]),
    NESTED,
)
def test_any_nesting_in_a_lock_is_a_callers_error(
    runtime: str, depth: int, opener: str, inner: Any
) -> None:
    from function.errors import BuildContextError
    from function.validation import parse, validate

    closer = {"[": "]", '{"a":': "}", '{"packages":{"":': "}}", "(": ")", '["': '"]', "{": "}"}
    lock = opener * depth + json.dumps(inner) + closer[opener] * depth
    if runtime == "python":
        lock = f"requests==2.32.3 ; {lock} --hash=sha256:{'a' * 64}\n"
    request = {
        "lambdaFunction": "fix",
        "runtime": runtime,
        **VALID[runtime],
        "lockFile": lock,
    }
    with pytest.raises(BuildContextError) as caught:
        validate(parse(request), Settings())
    assert caught.value.reason in CALLER_REASONS, caught.value.message


# --- `files` trees: refused, or packed with every name once and no file under a file ---------

PARTS = ["lib", "Lib", "LIB", "util.py", "x.py", "a", "A", "Dockerfile", "dockerfile",
         "requirements.txt", "remediation.py", "Remediation.py", "b"]  # fmt: skip
GENERATED_PY = ["Dockerfile", "requirements.txt", "remediation.py"]


def _clashes(paths: list[str]) -> bool:
    """An oracle of its own, pair by pair: two paths clash when one folded equals the other,
    or a folded path is a folder of the other's, or two folders differ only by case."""
    for i, p in enumerate(paths):
        for q in paths[i + 1 :]:
            if p.lower() == q.lower():
                return True
            for a, b in ((p, q), (q, p)):
                if b.lower().startswith(a.lower() + "/"):
                    return True
            parts_p, parts_q = p.split("/")[:-1], q.split("/")[:-1]
            for x, y in zip(parts_p, parts_q, strict=False):
                if x != y:
                    if x.lower() == y.lower():
                        return True
                    break
    return False


@FUZZ
@given(
    st.lists(
        st.lists(st.sampled_from(PARTS), min_size=1, max_size=3).map("/".join),
        min_size=1,
        max_size=5,
        unique=True,
    )
)
def test_generated_files_trees_are_refused_or_pack_each_name_once(
    flask_app: tuple[Any, Path], paths: list[str]
) -> None:
    client, _ = flask_app
    files = {path: "X = 1\n" for path in paths if path != "remediation.py"}
    name = "trees-" + hashlib.sha256(json.dumps(paths).encode()).hexdigest()[:12]  # no cap
    data = {"lambdaFunction": name, "sourceCode": "print(1)\n", "files": files}
    body = json.dumps(
        {"specversion": "1.0", "type": "remediation.buildcontext.requested", "id": "t",
         "source": "/fuzz", "datacontenttype": "application/json", "data": data}
    )  # fmt: skip
    response = client.post("/", data=body, headers={"Content-Type": "application/cloudevents+json"})
    reply = response.get_json()
    generated_clash = any(p.lower() in {g.lower() for g in GENERATED_PY} for p in files)
    expected_refusal = generated_clash or _clashes([*GENERATED_PY, *files])
    event(response.headers["ce-type"])
    if response.headers["ce-type"] == "buildcontext.failed":
        assert reply["reason"] == "InvalidSource", reply
        assert expected_refusal, (paths, reply["message"])
        return
    assert not expected_refusal, paths
    with tarfile.open(fileobj=io.BytesIO(Path(reply["storage"]["path"]).read_bytes())) as tar:
        members = tar.getmembers()
    names = [m.name.lower() for m in members]
    assert len(names) == len(set(names))
    regular = {m.name.lower() for m in members if m.isfile()}
    assert not any(
        n.rsplit("/", i)[0] in regular for n in names for i in range(1, n.count("/") + 1)
    )


# --- `verify`: whatever the store holds, one line and a documented exit code -------------------

JSONS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(
    ["remediation.py", "Dockerfile", "requirements.txt", "../evil", "/etc/x", "./a", "a//b",
     "lib", "lib/u.py", "LIB/u.py", "a" * 120, "\u00e9", "a\nb", ""]
)  # fmt: skip
KINDS = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
     tarfile.FIFOTYPE, tarfile.CONTTYPE, b"S"]
)  # fmt: skip


@st.composite
def tars(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            for name, kind, data in draw(
                st.lists(st.tuples(NAMES, KINDS, st.binary(max_size=40)), max_size=5)
            ):
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = (
                    "remediation.py" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                )
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    except ValueError:  # a name USTAR cannot hold: tarfile refuses to write it
        return b""
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    from function.create import CreateService
    from function.stores import open_store

    loaded = Settings(fs_root=tmp_path_factory.mktemp("verify-fuzz"))
    built = CreateService(loaded, open_store("filesystem", loaded)).build(
        {"lambdaFunction": "fix", "sourceCode": "print(1)\n"}, "req-1"
    )
    payload = json.loads(base64.b64decode(json.loads(built.envelope)["payload"]))
    return built.archive.data, payload


def _mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """`value` with the node that `path` picks (indices modulo each level's size) replaced."""
    if not path or not isinstance(value, dict | list) or not value:
        return replacement
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[path[0] % len(keys)]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[key] = _mutate(value[key], path[1:], replacement)
    return copy


@FUZZ
@given(st.data())
def test_verify_answers_any_archive_and_envelope_with_one_line_and_a_documented_code(
    real_context: tuple[bytes, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    from function.__main__ import main
    from function.archive import gzip_bytes
    from function.provenance import envelope
    from function.refusals import exit_codes

    archive, statement = real_context
    tar = data.draw(tars() | st.binary(max_size=2048))
    archive = data.draw(
        st.sampled_from(["real", "tar", "tar", "tar", "bytes", "cut"]).map(
            lambda kind: {
                "real": archive,
                "tar": gzip_bytes(tar),
                "bytes": tar,
                "cut": archive[:-7],
            }[kind]
        )
    )
    body: Any = statement
    if data.draw(st.booleans()):
        body = _mutate(
            statement, data.draw(st.lists(st.integers(0, 20), max_size=6)), data.draw(JSONS)
        )
    if data.draw(st.integers(0, 3)):  # subjects that match: the archive's own checks are reached
        body = _mutate(body, [], body) if not isinstance(body, dict) else {
            **body, "subject": [
                {"name": "context.tar.gz", "digest": {"sha256": hashlib.sha256(archive).hexdigest()}},
                {"name": "context.tar", "digest": {"sha256": hashlib.sha256(tar).hexdigest()}},
            ]}  # fmt: skip
    raw = data.draw(
        st.sampled_from(["statement", "statement", "statement", "json", "bytes"]).map(
            lambda kind: envelope(body, None) if kind == "statement" else
            json.dumps(data.draw(JSONS)).encode() if kind == "json" else
            data.draw(st.binary(max_size=200))
        )
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("verify")
    (folder / "a").write_bytes(archive)
    (folder / "e").write_bytes(raw)
    argv = ["verify", str(folder / "a"), "-e", str(folder / "e"), "--allow-unsigned"]
    argv += data.draw(
        st.sampled_from(
            [["--unpinned"], ["--expect-archive-sha256", hashlib.sha256(archive).hexdigest()]]
        )
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    event(f"verify exit {code}")
    assert code in exit_codes() and code != 1, err.getvalue()
    if code != 0:
        assert len(err.getvalue().splitlines()) == 1 and out.getvalue() == "", err.getvalue()
        assert len(err.getvalue()) < 2000


# --- request size and shape at the serving edge ---------------------------------------------

EDGE_LIMIT = 4096
LENGTHS = st.one_of(
    st.integers(0, 2 * EDGE_LIMIT).map(str),
    st.integers(0, 2**80).map(str),
    st.sampled_from(["", "-1", "+5", " 7", "0x10", "1e3", "5, 5", "\u0661\u0662", "7\x00"]),
)
CODINGS = st.sampled_from(
    ["chunked", "Chunked", " chunked ", "gzip", "identity", "chunked, chunked", "gzip, chunked",
     "chunked, gzip", "chunked;q=1", "", "\u00e9chunked"]
)  # fmt: skip


@st.composite
def framed_bodies(draw: st.DrawFn) -> bytes:
    """A body as sent: raw bytes, or chunked framing (well formed, or with one twist)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300)) * draw(st.sampled_from([1, 20]))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=100), max_size=4))
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    twist = draw(
        st.sampled_from(["", "no end", "big size", "long extension", "bad size", "trailer"])
    )
    ends = {
        "": b"0\r\n\r\n",
        "no end": b"",
        "big size": b"fffffffffffffffffff\r\nx",
        "long extension": b"1;" + b"e" * 6000,
        "bad size": b"zz\r\nabc\r\n0\r\n\r\n",
        "trailer": b"0\r\nX-Trailer: " + b"t" * 100 + b"\r\n\r\n",
    }
    return framed + ends[twist]


@st.composite
def framings(draw: st.DrawFn) -> bytes:
    """One request whose Content-Length and Transfer-Encoding headers (any number, any value)
    may or may not match its body."""
    version = draw(st.sampled_from(["1.0", "1.1"]))
    path = draw(st.sampled_from(["/", "/health/readiness", "/metrics", "/elsewhere"]))
    headers = [("Connection", "close")]
    headers += [("Content-Length", v) for v in draw(st.lists(LENGTHS, max_size=2))]
    headers += [("Transfer-Encoding", v) for v in draw(st.lists(CODINGS, max_size=2))]
    if draw(st.booleans()):
        headers.append(("Expect", "100-continue"))
    lines = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + draw(framed_bodies())


@settings(
    max_examples=max(EXAMPLES // 10, 25),
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(framings())
def test_any_request_framing_is_answered_without_a_5xx(
    edge_server: FunctionServer, request: bytes
) -> None:
    """Whatever the framing, the edge answers (a refusal: JSON naming its status) or the app
    does, within the read timeout: never a 5xx, never a connection left hanging."""
    with socket.create_connection(("127.0.0.1", edge_server.port), timeout=30) as sock:
        with contextlib.suppress(OSError):  # refused and closed while we still sent
            sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    data = data.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1."), (request[:300], data[:300])
    status = int(status_line.split()[1])
    assert status < 500, (request[:300], data[:500])
    head, _, body = rest.partition(b"\r\n\r\n")
    if b"content-type: application/json" in head.lower():
        assert json.loads(body)["status"] == status, body[:300]


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionServer]:
    server = FunctionServer(
        {
            "BUILD_CONTEXT_MAX_REQUEST_BYTES": str(EDGE_LIMIT),
            "BUILD_CONTEXT_READ_TIMEOUT_SECONDS": "2",
            "BUILD_CONTEXT_PROCESSES": "1",
        },
        tmp_path_factory.mktemp("fuzz-edge"),
    ).start()
    yield server
    server.stop()
