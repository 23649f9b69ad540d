"""Hostile input, class by class (issue 11): each request string is bounded, fully matched and
encoded once; the caller's bad input is a caller reason, never InternalError or HTTP 500."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from function import boundary
from function.create import CreateService
from function.errors import (
    BuildContextError,
    InvalidRequest,
    InvalidSource,
)
from function.settings import Settings
from function.stores.base import ContextRecord
from function.stores.filesystem import FilesystemStore
from function.stores.s3 import object_metadata
from function.stores.s3.codec import METADATA_BUDGET
from function.validation import parse, validate
from tests.support.server import FunctionServer, encode

SETTINGS = Settings()
GO_MAIN = "package main\n\nfunc main() {}\n"
SERVING = f"3.{sys.version_info[1]}"


def check(data: dict[str, Any]) -> Any:
    return validate(parse(data), SETTINGS)


def refused(data: dict[str, Any]) -> BuildContextError:
    with pytest.raises(BuildContextError) as caught:
        check(data)
    assert caught.value.reason in {
        "InvalidRequest",
        "InvalidSource",
        "UnsupportedRuntime",
        "ContextTooLarge",
    }, caught.value
    return caught.value


def python(**extra: Any) -> dict[str, Any]:
    return {"lambdaFunction": "fix", "sourceCode": "print(1)\n", **extra}


def node(deps: dict[str, str], **extra: Any) -> dict[str, Any]:
    return python(runtime="nodejs", sourceCode="console.log(1);\n", dependencies=deps, **extra)


def go(deps: list[str], **extra: Any) -> dict[str, Any]:
    return python(runtime="go", sourceCode=GO_MAIN, dependencies=deps, **extra)


# --- 1. full-string matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        python(lambdaFunction="fix\n"),
        python(namespace="default\n"),
        python(metadata={"ticket\n": "x"}),
        python(runtime="python\n"),
        python(runtimeVersion="3.13\n"),
        node({"axios\n": "^1.0.0"}),
        node({"axios": "^1.0.0\n"}),
        go(["github.com\n/google/uuid@v1.6.0"]),
        go(["github.com/google/uuid\n@v1.6.0"]),
        go(["github.com/google/uuid@v1.6.0\n"]),
        python(dependencies=["requests\n"]),
        python(files={"lib.py\n": "x = 1\n"}),
        python(
            owner={"apiVersion": "v1\n", "kind": "ConfigMap", "name": "a", "uid": str(uuid.uuid4())}
        ),
    ],
    ids=lambda data: json.dumps(data)[:60],
)
def test_a_trailing_newline_never_passes_a_check(data: dict[str, Any]) -> None:
    refused(data)


def test_one_dns_label_rule_with_its_63_character_bound_everywhere() -> None:
    # the namespace check had no length bound: 64 characters passed validation
    error = refused(python(namespace="a" * 64))
    assert isinstance(error, InvalidRequest) and error.errors[0].field == "namespace"
    assert check(python(namespace="a" * 63)).namespace == "a" * 63
    assert boundary.dns_label_problem("a" * 64)
    with pytest.raises(ValueError, match="ALLOWED_NAMESPACES"):
        Settings(allowed_namespaces="x" * 64)


# --- 2. bounded, encoded, shortened --------------------------------------------------------------


def test_messages_quote_at_most_a_bounded_prefix() -> None:
    error = refused(python(lambdaFunction="x\r\n" * 4000))
    assert len(error.message) < 300
    assert "(12000 chars)" in error.message
    assert "\n" not in error.message and "\r" not in error.message


LONG = "Z\n" * 5000


@pytest.mark.parametrize(
    "data",
    [
        python(lambdaFunction=LONG),
        python(runtime=LONG),
        python(runtimeVersion=LONG),
        python(namespace=LONG),
        python(metadata={LONG: "x"}),
        python(files={LONG: "x"}),
        python(dependencies=[LONG]),
        python(dependencies=["requests @ https://h/" + LONG]),
        python(dependencies=["x" * 10_000, "x" * 10_000]),
        python(**{LONG: 1}),
        python(owner={"apiVersion": LONG, "kind": LONG, "name": LONG, "uid": LONG}),
        node({LONG: "^1.0.0"}),
        node({"left-pad": LONG}),
        go([LONG + "@v1.0.0"]),
        go(["github.com/a/b@" + LONG]),
    ],
    ids=[
        "name",
        "runtime",
        "version",
        "namespace",
        "metadata-key",
        "path",
        "pip",
        "pip-url",
        "pip-duplicate",
        "unknown-field",
        "owner",
        "npm-name",
        "npm-range",
        "go-module",
        "go-version",
    ],
)
def test_no_message_quotes_a_10kb_value_whole(data: dict[str, Any]) -> None:
    error = refused(data)
    for message in [error.message, *(e.message for e in error.errors)]:
        assert len(message) < 600, message[:200]
        assert "\n" not in message
    for detail in error.errors:
        assert len(detail.field or "") < 200 and len(detail.file or "") < 200


@pytest.mark.parametrize(
    ("identity", "field"),
    [
        ({"id": "x" * 300_000, "source": "/agent"}, "id"),
        ({"id": "a b", "source": "/agent"}, "id"),
        ({"id": "a\u00e9", "source": "/agent"}, "id"),
        ({"id": "ok", "source": "/agent\n"}, "source"),
        ({"id": "ok", "source": "s" * 1025}, "source"),
    ],
)
def test_event_id_and_source_are_bounded_at_arrival(identity: dict[str, str], field: str) -> None:
    checked = boundary.event_identity(identity)
    assert checked.problem and checked.field == field
    assert len(checked.id) < 100
    assert all(" " <= c <= "~" for c in checked.id + checked.source)


def test_a_valid_event_identity_passes_unchanged() -> None:
    identity = {"id": "x" * 256, "source": "https://agent.example/sre?a=1"}
    checked = boundary.event_identity(identity)
    assert (checked.id, checked.source, checked.problem) == (
        identity["id"],
        identity["source"],
        None,
    )


def test_metadata_is_bounded_as_a_whole_so_that_s3_always_keeps_it() -> None:
    big = {f"k{i}": "é" * 20 for i in range(10)}  # 10 * (5 + 120) bytes as ASCII JSON
    error = refused(python(metadata=big))
    assert error.errors[0].field == "metadata" and "768" in error.message
    refused(python(metadata={"k": "line\u2028break"}))

    # the largest record, with the largest request id (percent-encoded threefold) and the
    # largest metadata accepted, still fits the S3 user-metadata budget whole
    value = "!" * (boundary.METADATA_MAX_BYTES - len('{"k":""}'))
    metadata = dict(check(python(metadata={"k": value})).metadata)
    now = datetime.now(UTC)
    record = ContextRecord(
        namespace="n" * 63,
        function="f" * 63,
        runtime="python",
        runtime_version="3.13",
        content_hash="a" * 64,
        archive_sha256="b" * 64,
        size_bytes=10**12,
        created_at=now,
        expires_at=now,
        request_id="!" * boundary.EVENT_ID_MAX,
        metadata=metadata,
    )
    stored = object_metadata(record)
    assert json.loads(stored["metadata"]) == metadata
    assert sum(len(k) + len(v) for k, v in stored.items()) <= METADATA_BUDGET


# --- 3. parser blow-ups are the caller's -------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "source"),
    [
        ("python", "x = " + "-" * 100_000 + "1\n"),
        ("python", "x = a" + ".b" * 200_000 + "\n"),
        ("nodejs", "let x = " + "- " * 100_000 + "1;\n"),
        ("nodejs", "let x = " + "[" * 5_000 + "]" * 5_000 + ";\n"),
        ("go", "package main\n\nfunc main() { _ = " + "(" * 5_000 + "1" + ")" * 5_000 + " }\n"),
    ],
    ids=["py-unary", "py-attributes", "js-unary", "js-arrays", "go-parens"],
)
def test_sources_nesting_too_deeply_are_invalid_source(runtime: str, source: str) -> None:
    error = refused(python(runtime=runtime, sourceCode=source))
    assert isinstance(error, InvalidSource)
    assert "nests too deeply" in error.message


def test_ordinary_nesting_still_passes() -> None:
    check(python(runtime="nodejs", sourceCode="let x = " + "[" * 100 + "]" * 100 + ";\n"))
    check(python(sourceCode="x = " + "(" * 100 + "1" + ")" * 100 + "\n"))


# --- 4. no validator wider than its consumer ---------------------------------------------------


@pytest.mark.parametrize("spec", ["1.0.0-a.tgz", "1.0.0-x.tar.gz", "1.0.0-a.TAR", "latest", "a/b"])
def test_npm_specs_npm_reads_as_files_tags_or_repositories_are_refused(spec: str) -> None:
    refused(node({"left-pad": spec}))


@pytest.mark.parametrize(
    "requirement",
    [
        'requests; os_name == "a\fb"',
        'requests; os_name == "a\vb"',
        'requests; os_name == "a\u2028b"',
        'requests; os_name == "a #b"',
        'requests; os_name == "${HOME}"',
        'requests; os_name == "a --hash=b"',
    ],
)
def test_pip_lines_its_requirements_reader_would_read_otherwise_are_refused(
    requirement: str,
) -> None:
    refused(python(dependencies=[requirement]))


@pytest.mark.parametrize(
    "spec",
    [
        "github.com/foo/bar@v2.0.0",
        "github.com/foo/bar/v2@v3.0.0",
        "github.com/foo/bar/v2@v2.0.0+incompatible",
        "github.com/foo/bar@v1.0.0+incompatible",
        "github.com/foo/bar@v1.0.0+meta",
        "github.com/foo/bar/v1@v1.0.0",
        "gopkg.in/yaml.v2@v3.0.0",
        "gopkg.in/yaml@v2.0.0",
        "github.com/foo/CON@v1.0.0",
    ],
)
def test_go_versions_follow_the_major_version_suffix_rules(spec: str) -> None:
    refused(go([spec]))


@pytest.mark.parametrize(
    "spec",
    [
        "github.com/foo/bar/v2@v2.1.0",
        "github.com/foo/bar@v2.0.0+incompatible",
        "gopkg.in/yaml.v3@v3.0.1",
        "github.com/google/uuid@v1.6.0",
    ],
)
def test_go_versions_that_go_accepts_pass(spec: str) -> None:
    assert check(go([spec])).dependencies


@pytest.mark.parametrize(
    ("runtime", "path"),
    [
        ("go", "go.work"),
        ("go", "go.work.sum"),
        ("go", "vendor/modules.txt"),
        ("go", "sub/go.mod"),
        ("nodejs", "node_modules/axios/index.js"),
        ("nodejs", "package-lock.json"),
        ("python", "Containerfile"),
        ("python", "Dockerfile.dockerignore"),
        ("python", ".npmrc"),
    ],
)
def test_files_a_toolchain_reads_as_its_own_instructions_are_refused(
    runtime: str, path: str
) -> None:
    entry = {"python": "print(1)\n", "nodejs": "1;\n", "go": GO_MAIN}[runtime]
    error = refused(python(runtime=runtime, sourceCode=entry, files={path: "x\n"}))
    assert isinstance(error, InvalidSource)


@pytest.mark.parametrize(
    "source",
    ["# coding: bogus\nx = 1\n", "# -*- coding: latin-1 -*-\nx = 'é'\n", "", " \n\t\n"],
    ids=["unknown-cookie", "latin-1-cookie", "empty", "whitespace"],
)
def test_python_files_cpython_would_not_run_as_checked_are_refused(source: str) -> None:
    assert isinstance(refused(python(sourceCode=source)), InvalidSource)


def test_a_bom_and_a_utf8_cookie_are_fine_as_cpython_runs_them() -> None:
    check(python(sourceCode="\ufeffprint(1)\n"))
    check(python(sourceCode="# -*- coding: utf-8 -*-\nprint('é')\n"))


@pytest.mark.parametrize(
    "source",
    [
        'x = f"{"a"}"\n',
        "x = f'{'a'}'\n",
        'x = f"{"""a"""}"\n',
        "x = f\"{'\\n'.join([])}\"\n",
        'x = f"{1 # no\n}"\n',
    ],
)
def test_pep701_fstrings_are_refused_for_311_and_fine_for_312(source: str) -> None:
    error = refused(python(sourceCode=source, runtimeVersion="3.11"))
    assert "3.12" in error.message
    assert check(python(sourceCode=source, runtimeVersion="3.12")).sources


def test_fstrings_valid_in_311_pass_for_311() -> None:
    check(python(sourceCode='x = f"{\'a\'}" + f"""{"b"}"""\n', runtimeVersion="3.11"))


def test_the_reply_warns_when_the_syntax_check_is_not_exact_for_the_version() -> None:
    assert check(python(runtimeVersion=SERVING)).warnings == ()
    other = "3.11" if SERVING != "3.11" else "3.12"
    (warning,) = check(python(runtimeVersion=other)).warnings
    assert other in warning and "not exact" in warning


# --- 5. owner references -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apiVersion", "a/b/c"),
        ("apiVersion", "Lambda.io/v1"),
        ("kind", "lambdaFunction"),
        ("name", "Bad_Name"),
        ("uid", "u-1"),
        ("uid", str(uuid.uuid4()).upper()),
    ],
)
def test_owner_references_are_checked_as_kubernetes_would(key: str, value: str) -> None:
    good = {
        "apiVersion": "lambda.knative.io/v1alpha1",
        "kind": "LambdaFunction",
        "name": "disk-cleanup",
        "uid": str(uuid.uuid4()),
    }
    assert check(python(owner=good)).owner is not None
    error = refused(python(owner={**good, key: value}))
    assert isinstance(error, InvalidRequest)
    assert error.errors[0].field == f"owner.{key}"


# --- 6. reuse describes what is stored ---------------------------------------------------------


def test_a_reuse_replies_with_the_stored_metadata_and_the_storing_request(tmp_path: Path) -> None:
    service = CreateService(SETTINGS, FilesystemStore(tmp_path))
    first = service.run(python(metadata={"ticket": "INC-1"}), "req-1")
    again = service.run(python(metadata={"ticket": "INC-2"}), "req-2")

    assert again.reused
    assert again.metadata == first.metadata == {"ticket": "INC-1"}
    assert (again.request_id, again.created_by_request_id) == ("req-2", "req-1")
    assert first.created_by_request_id == "req-1"


# --- over HTTP: replies, headers, status ----------------------------------------------------------


def _nothing_stored(server: FunctionServer) -> None:
    root = server.workdir / "contexts"
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "name",
    ["fix\n", "fix\r\nX-Injected: 1", "fïx", "naïve-\u2603", "x" * 10_000],
    ids=["lf", "crlf", "latin1", "non-latin1", "10k"],
)
def test_a_bad_function_name_is_a_failed_event_without_a_subject(
    server: FunctionServer, name: str
) -> None:
    reply = server.send({"lambdaFunction": name, "sourceCode": "print(1)\n"})
    assert reply.status == 200, reply
    assert reply.type == "buildcontext.failed"
    assert reply.data["reason"] == "InvalidRequest"
    assert reply.subject is None and "lambdaFunction" not in reply.data
    assert len(reply.data["message"]) < 300
    _nothing_stored(server)


def test_an_oversized_event_id_is_refused_and_never_copied(server: FunctionServer) -> None:
    huge = "i" * 300_000
    headers, body = encode(
        {"lambdaFunction": "fix", "sourceCode": "print(1)\n"}, id=huge, structured=True
    )
    response = server.session.post(server.url, headers=headers, data=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    data = response.json()
    assert response.headers["ce-type"] == "buildcontext.failed"
    assert data["reason"] == "InvalidRequest" and not data["retryable"]
    assert len(data["requestId"]) < 100 and len(response.content) < 2000
    assert huge not in server.log()
    _nothing_stored(server)


@pytest.mark.parametrize(
    "raw",
    [b'{"lambdaFunction": "fix", "ttlSeconds": ' + b"9" * 5000 + b"}", b"[" * 100_000],
    ids=["5000-digits", "deep-nesting"],
)
def test_data_that_does_not_decode_is_invalid_data_not_a_missing_event(
    server: FunctionServer, raw: bytes
) -> None:
    headers, _ = encode({})
    reply = server.session.post(server.url, headers=headers, data=raw, timeout=60)
    assert reply.status_code == 200, reply.text[:500]
    data = reply.json()
    assert reply.headers["ce-type"] == "buildcontext.failed"
    assert data["reason"] == "InvalidRequest"
    assert data["message"].startswith("data: the event data")
    _nothing_stored(server)


def test_a_structured_body_that_does_not_decode_is_a_400_that_says_so(
    server: FunctionServer,
) -> None:
    body = b'{"specversion": "1.0", "data": ' + b"[" * 100_000
    response = server.session.post(
        server.url,
        data=body,
        headers={"Content-Type": "application/cloudevents+json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "does not decode" in response.json()["error"]


def test_trace_context_that_is_not_printable_ascii_never_reaches_a_log_or_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from werkzeug.test import Client

    from function import server as function_server
    from function.app import App
    from function.telemetry import Telemetry

    app = App.from_settings(
        Settings(fs_root=tmp_path), telemetry=Telemetry(MeterProvider(), TracerProvider())
    )
    client = Client(function_server.wsgi_app(app)[0])
    body = json.dumps(
        {
            "specversion": "1.0",
            "type": "remediation.buildcontext.requested",
            "id": "trace-1",
            "source": "/agent",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "a=b\r\nX-Injected: 1",
            "data": {"lambdaFunction": "fix", "sourceCode": "print(1)\n"},
        }
    )
    with caplog.at_level("DEBUG"):
        response = client.post(
            "/", data=body, headers={"Content-Type": "application/cloudevents+json"}
        )
    app.close()
    assert response.status_code == 200
    assert response.headers["ce-type"] == "buildcontext.created"
    assert response.headers.get("ce-tracestate") is None
    assert response.headers["ce-traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert not [r for r in caplog.records if "X-Injected" in r.getMessage()]
