"""Property test of the input boundary: generated hostile requests (any Unicode, control
characters, deep nesting, oversized ids) through the real validation, rendering, store and
reply rendering (parliament's Flask app, and the real HTTP server for a sample).

Invariants: no InternalError, retryable failure or 5xx for caller input; no CR, LF or
non-Latin-1 in any reply header; nothing stored after a failure; whatever is created is read
back by its consumers (pip, npm-package-arg, go, CPython) as validated.

The normal suite runs a fixed seed with a small budget. A long, randomised run:

    BUILD_CONTEXT_FUZZ_EXAMPLES=2000 scripts/fuzz
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
