"""The request path end to end: real CloudEvents over HTTP to the real server."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from function.server import CONNECTION_LIMIT
from tests.conftest import StartServer
from tests.support.contexts import example, members, read_member
from tests.support.polling import wait_for
from tests.support.server import FunctionServer, encode

RUNTIMES = ["python", "nodejs", "go"]


def stored_archive(reply_data: dict[str, object]) -> bytes:
    storage = reply_data["storage"]
    assert isinstance(storage, dict)
    return Path(str(storage["path"])).read_bytes()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_created_for_every_runtime_and_mode(
    server: FunctionServer, runtime: str, structured: bool
) -> None:
    request = example(runtime)
    reply = server.send(request, structured=structured, id=f"req-{runtime}")
    assert reply.status == 200, reply
    assert reply.type == "buildcontext.created", reply
    assert reply.subject == request["lambdaFunction"]
    assert reply.headers["ce-source"] == "/build-context"
    data = reply.data
    assert data["runtime"] == runtime
    assert data["requestId"] == f"req-{runtime}"
    assert data["metadata"] == request["metadata"]
    assert data["reused"] is False
    archive = stored_archive(data)
    assert hashlib.sha256(archive).hexdigest() == data["archiveSha256"]
    assert data["sizeBytes"] == len(archive)
    import gzip

    assert hashlib.sha256(gzip.decompress(archive)).hexdigest() == data["contentHash"]
    assert data["imageTag"].startswith("sha256-") and data["contentHash"].startswith(
        data["imageTag"].removeprefix("sha256-")
    )
    assert data["contextUri"] == f"tar://{data['storage']['path']}"
    entry = {"python": "remediation.py", "nodejs": "remediation.js", "go": "remediation.go"}[
        runtime
    ]
    manifest = {"python": "requirements.txt", "nodejs": "package.json", "go": "go.mod"}[runtime]
    assert set(members(archive)) == {".dockerignore", "Dockerfile", entry, manifest}
    assert data["files"] == sorted([".dockerignore", "Dockerfile", entry, manifest])
    assert read_member(archive, entry) == request["sourceCode"]
    expires = time.strptime(data["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")
    created = time.strptime(data["createdAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert time.mktime(expires) - time.mktime(created) == 604800


def test_snake_case_and_aliases_are_normalised(server: FunctionServer) -> None:
    reply = server.send(
        {
            "lambda_function": "fix-it",
            "runtime": "golang",
            "source_code": example("go")["sourceCode"],
        }
    )
    assert reply.type == "buildcontext.created", reply
    assert reply.data["runtime"] == "go"
    assert reply.data["runtimeVersion"] == "1.26"


def test_no_dependency_is_added_that_was_not_asked_for(server: FunctionServer) -> None:
    reply = server.send(example("python"))
    requirements = read_member(stored_archive(reply.data), "requirements.txt")
    assert [line for line in requirements.splitlines() if not line.startswith("#")] == []
    dockerfile = read_member(stored_archive(reply.data), "Dockerfile")
    assert "pip install" not in dockerfile


def test_dependencies_are_rendered_sorted_and_canonical(server: FunctionServer) -> None:
    reply = server.send(
        {
            "lambdaFunction": "deps",
            "sourceCode": "print(1)\n",
            "dependencies": ["Tenacity==9.0.0", "requests >= 2.31"],
        }
    )
    requirements = read_member(stored_archive(reply.data), "requirements.txt")
    assert requirements.splitlines()[1:] == ["requests>=2.31", "Tenacity==9.0.0"]


def test_redelivery_of_the_same_event_reuses_the_context(server: FunctionServer) -> None:
    first = server.send(example("nodejs"), id="same-id")
    second = server.send(example("nodejs"), id="same-id")
    assert first.type == second.type == "buildcontext.created"
    assert first.data["reused"] is False and second.data["reused"] is True
    for key in ("contentHash", "archiveSha256", "imageTag", "storage", "createdAt"):
        assert first.data[key] == second.data[key]
    assert second.data["expiresAt"] >= first.data["expiresAt"]


def test_a_one_character_change_gives_another_hash_and_tag(server: FunctionServer) -> None:
    request = example("python")
    first = server.send(request)
    request["sourceCode"] = request["sourceCode"].replace("default", "defaulT")
    second = server.send(request)
    assert first.data["contentHash"] != second.data["contentHash"]
    assert first.data["imageTag"] != second.data["imageTag"]


def test_concurrent_identical_requests_store_one_context(server: FunctionServer) -> None:
    request = example("go")
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda i: server.send(request, id=f"c-{i}"), range(32)))
    assert {r.type for r in replies} == {"buildcontext.created"}
    assert len({r.data["contentHash"] for r in replies}) == 1
    assert sum(not r.data["reused"] for r in replies) == 1
    function_dir = Path(replies[0].data["storage"]["path"]).parents[1]
    assert [p.name for p in function_dir.iterdir() if not p.name.startswith(".")] == [
        replies[0].data["contentHash"]
    ]
    assert not [p for p in function_dir.iterdir() if p.name.startswith(".tmp-")]


FAILURES = [
    (
        "InvalidRequest",
        {"lambdaFunction": "UPPER", "sourceCode": "print(1)"},
        "lambdaFunction",
    ),
    ("InvalidRequest", {"sourceCode": "print(1)"}, "lambdaFunction"),
    ("InvalidRequest", {"lambdaFunction": "x", "sourceCode": "1", "colour": "red"}, "colour"),
    (
        "InvalidRequest",
        {"lambdaFunction": "x", "sourceCode": "1", "dependencies": ["--index-url=http://evil"]},
        "dependencies[0]",
    ),
    (
        "InvalidRequest",
        {"lambdaFunction": "x", "sourceCode": "1", "ttlSeconds": 99999999},
        "ttlSeconds",
    ),
    (
        "UnsupportedRuntime",
        {"lambdaFunction": "x", "runtime": "cobol", "sourceCode": "1"},
        "runtime",
    ),
    (
        "UnsupportedRuntime",
        {"lambdaFunction": "x", "runtime": "python", "runtimeVersion": "2.7", "sourceCode": "1"},
        "runtimeVersion",
    ),
    ("InvalidSource", {"lambdaFunction": "x", "sourceCode": "def broken(:\n"}, None),
    (
        "InvalidSource",
        {"lambdaFunction": "x", "sourceCode": "1", "files": {"../escape.py": "1"}},
        "files.../escape.py",
    ),
    (
        "ContextTooLarge",
        {"lambdaFunction": "x", "sourceCode": "#" + "x" * (1024 * 1024 + 1)},
        "sourceCode",
    ),
    (
        "StorageForbidden",
        {"lambdaFunction": "x", "sourceCode": "1", "namespace": "kube-system"},
        "namespace",
    ),
]


@pytest.mark.parametrize(
    ("reason", "data", "field"), FAILURES, ids=[f[0] + "-" + str(f[2]) for f in FAILURES]
)
def test_every_failure_reason_is_a_failed_event(
    server: FunctionServer, reason: str, data: dict[str, object], field: str | None
) -> None:
    reply = server.send(data, id="bad-1")
    assert reply.status == 200
    assert reply.type == "buildcontext.failed", reply
    assert reply.data["reason"] == reason
    assert reply.data["requestId"] == "bad-1"
    assert reply.data["retryable"] is False
    assert reply.data["message"]
    if field:
        assert field in {e.get("field") for e in reply.data["errors"]}, reply.data
    contexts = Path(server.env["BUILD_CONTEXT_FS_ROOT"])
    assert not list(contexts.glob("*/*/*/context.tar.gz")), "nothing may be stored on failure"


def test_syntax_errors_carry_file_line_and_column(server: FunctionServer) -> None:
    for runtime, source, line in [
        ("python", "import os\n\ndef f(:\n    pass\n", 3),
        ("nodejs", "const a = 1;\nfunction f( {\n", 2),
        ("go", "package main\n\nfunc main() {\n\tx := \n}\n", 4),
    ]:
        reply = server.send({"lambdaFunction": "x", "runtime": runtime, "sourceCode": source})
        assert reply.data["reason"] == "InvalidSource", reply
        error = reply.data["errors"][0]
        assert error["file"].startswith("remediation.")
        assert error["line"] >= line - 1 and error["column"] >= 1, error


def test_storage_unavailable_is_retryable(server: FunctionServer) -> None:
    root = Path(server.env["BUILD_CONTEXT_FS_ROOT"])
    shutil.rmtree(root)
    root.write_text("not a folder any more")
    reply = server.send(example("python"))
    assert reply.data["reason"] == "StorageUnavailable", reply
    assert reply.data["retryable"] is True


def test_a_corrupt_stored_record_is_an_internal_error(server: FunctionServer) -> None:
    first = server.send(example("python"))
    record = Path(first.data["storage"]["path"]).with_name("context.json")
    record.write_text("{not json")
    reply = server.send(example("python"))
    assert reply.data["reason"] == "InternalError", reply
    assert reply.data["requestId"] in reply.data["message"]
    assert "{not json" not in reply.data["message"]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b'{"lambdaFunction": "x"}'),
        ({"Content-Type": "text/plain"}, b"hello"),
    ],
)
def test_a_request_that_is_not_a_cloudevent_is_400(
    server: FunctionServer, headers: dict[str, str], body: bytes
) -> None:
    response = requests.post(server.url, headers=headers, data=body, timeout=10)
    assert response.status_code == 400
    assert "CloudEvent" in response.json()["error"]


def test_an_event_of_another_type_is_400(server: FunctionServer) -> None:
    reply = server.send({"x": 1}, type="com.example.other")
    assert reply.status == 400
    assert "com.example.other" in reply.data["error"]


def test_an_oversized_body_is_413_with_the_limit(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_MAX_REQUEST_BYTES="4096")
    reply = server.send({"lambdaFunction": "x", "sourceCode": "#" + "y" * 5000})
    assert reply.status == 413
    assert "BUILD_CONTEXT_MAX_REQUEST_BYTES" in reply.data["error"]


def test_health_endpoints(server: FunctionServer) -> None:
    assert requests.get(f"{server.url}/health/liveness", timeout=5).ok
    assert requests.get(f"{server.url}/health/readiness", timeout=5).ok


def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    server = FunctionServer({"BUILD_CONTEXT_TTL_SECONDS": "ten"}, tmp_path)
    with pytest.raises(RuntimeError, match="BUILD_CONTEXT_TTL_SECONDS"):
        server.start(timeout=20)


def test_sigterm_lets_in_flight_requests_finish(start_server: StartServer) -> None:
    """Four large requests share the interpreter, so the last answers well after the signal;
    the test insists on that, so that it cannot pass without a request in flight. The signal
    goes only once every request has been written, so none can miss the server."""
    server = start_server(BUILD_CONTEXT_THREADS="4")
    outcomes: list[tuple[float, object]] = []
    lock = threading.Lock()
    written = [threading.Event() for _ in range(4)]

    def call(index: int) -> None:
        headers, body = encode(
            {
                "lambdaFunction": f"slow-{index}",
                "runtime": "go",
                "sourceCode": ("package main\n\nfunc main() {}\n" + "var x = 1\n" * 90000),
            },
            id=f"slow-{index}",
        )
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            connection.request("POST", "/", body=body, headers=headers)
            written[index].set()
            response = connection.getresponse()
            outcome: object = (response.status, response.getheader("ce-type"))
        except OSError as exc:
            outcome = exc
        finally:
            written[index].set()
            connection.close()
        with lock:
            outcomes.append((time.monotonic(), outcome))

    workers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for event in written:
        assert event.wait(30)
    assert server.process is not None
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.join(60)
    assert server.process.wait(30) == 0
    answers = [outcome for _, outcome in outcomes]
    assert answers == [(200, "buildcontext.created")] * 4, answers
    assert max(at for at, _ in outcomes) > signalled, "no request was in flight at SIGTERM"
    assert any(line.get("message") == "stopping" for line in server.log_lines())


def test_sigterm_answers_a_connection_still_waiting_to_be_accepted(
    start_server: StartServer,
) -> None:
    """A connection made before SIGTERM but not accepted yet (here it waits in the listen
    backlog behind the connection limit; on a busy machine, behind a slow event loop) is the
    server's to answer: it is taken and answered before the process stops, not reset."""
    server = start_server(
        BUILD_CONTEXT_PROCESSES="1",
        BUILD_CONTEXT_READ_TIMEOUT_SECONDS="600",  # the silent connections stay open
        BUILD_CONTEXT_IDLE_TIMEOUT_SECONDS="600",
    )
    silent = []
    try:
        for _ in range(CONNECTION_LIMIT):
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        wait_for(
            lambda: any("connection limit" in line["message"] for line in server.log_lines()),
            60,
            what="waitress at its connection limit",
        )
        headers, body = encode(example("python"), id="in-the-backlog")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/", body=body, headers=headers)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        response = connection.getresponse()
        assert (response.status, response.getheader("ce-type")) == (200, "buildcontext.created")
        connection.close()
    finally:
        for sock in silent:
            sock.close()
    assert server.process.wait(30) == 0


def test_sigterm_in_mid_upload_still_answers_the_request(start_server: StartServer) -> None:
    """A request whose body is still arriving when SIGTERM lands has not reached the app yet;
    the drain must wait for it rather than close the connection under the caller."""
    server = start_server()
    headers, body = encode(example("python"), id="mid-upload")
    head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        # "100 Continue": the server has parsed the headers and waits for the body
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body[:10])
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # well past the moment an unaware drain would have closed the socket
        assert server.process.poll() is None, "the server stopped with a request half-received"
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", reply[:500]
    assert b"ce-type: buildcontext.created" in rest.lower()
    assert server.process.wait(30) == 0
    stopping = [line for line in server.log_lines() if line.get("message") == "stopping"]
    assert stopping and all(line["drained"] is True for line in stopping), stopping


def test_reply_json_round_trips_the_schema(server: FunctionServer) -> None:
    import jsonschema

    schemas = Path(__file__).parents[1] / "config" / "schemas"
    created = server.send(example("go")).data
    failed = server.send({"lambdaFunction": "x", "runtime": "cobol"}).data
    jsonschema.validate(created, json.loads((schemas / "buildcontext.created.json").read_text()))
    jsonschema.validate(failed, json.loads((schemas / "buildcontext.failed.json").read_text()))
    jsonschema.validate(
        example("go"),
        json.loads((schemas / "remediation.buildcontext.requested.json").read_text()),
    )
