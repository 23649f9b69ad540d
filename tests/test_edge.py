"""The serving edge over real sockets: what the server refuses before it reads a request
(function/edge.py; docs/security.md, "Work done before the sender is known").

Each test speaks raw HTTP/1.1 to the real server, so that it decides what is sent and when: a
body declared and never sent, a chunked body that never ends, headers trickled a byte at a time.
"Refused before it is read" is shown the strongest way a client can: the reply arrives while
the body has not been sent at all. The waitress the edge subclasses is pinned; these tests are
what fails if a new waitress behaves otherwise.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests

from tests.conftest import StartServer
from tests.support.contexts import example
from tests.support.server import FunctionServer, encode
from tests.test_auth_keys import ISSUER, SUBJECT, IssuerDouble, serving_issuer

DECLARED = 200 * 1024 * 1024
"""What a hostile sender declares: far above any limit."""
SMALL_LIMIT = 65536
PATIENCE = 30.0
"""How long a test waits for a reply that should come at once: generous for a busy machine,
and far below what an unbounded read (or waitress's own 120 s idle timeout) would take."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def head(path: str = "/", *, version: str = "1.1", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def event(data: dict[str, Any] | None = None, **extra: str) -> tuple[bytes, bytes]:
    """A binary-mode CloudEvent (of the python example by default): its head (`extra` headers
    added or replaced) and its body."""
    headers, body = encode(data or example("python"))
    return head(headers={**headers, "Content-Length": str(len(body)), **extra}), body


def connect(server: FunctionServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)


def read_reply(sock: socket.socket, timeout: float = PATIENCE) -> Reply:
    """Everything the server sends until it closes the connection, as one reply; an interim
    `100 Continue` would show as its own status line at the start."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if _complete(data):
                break
    except ConnectionResetError:
        pass  # closed with our unread body in its buffer: what it sent before is here
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1."), f"no reply: {data[:200]!r}"
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


def _complete(data: bytes) -> bool:
    head_block, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head_block.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def assert_refused(reply: Reply, status: int, reason: str, *, names: str = "") -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json", reply
    assert reply.headers["connection"] == "close", reply
    assert reply.json()["reason"] == reason, reply
    assert names in reply.json()["error"], reply


class Trickle(threading.Thread):
    """Sends `data` a piece at a time, `interval` seconds apart, until done or the server
    closes the connection; `sent` counts what the socket took."""

    def __init__(self, sock: socket.socket, data: bytes, piece: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.piece, self.interval = sock, data, piece, interval
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while self.sent < len(self.data) and not self.stop.is_set():
                self.sent += self.sock.send(self.data[self.sent : self.sent + self.piece])
                if self.interval:
                    time.sleep(self.interval)
        except OSError:
            pass  # the server closed the connection: the point


# --- bodies over the limit -----------------------------------------------------------------


def test_a_declared_oversized_body_is_refused_without_reading_it(server: FunctionServer) -> None:
    with connect(server) as sock:
        sock.sendall(event(None, **{"Content-Length": str(DECLARED)})[0])
        reply = read_reply(sock)
    assert_refused(reply, 413, "body_too_large", names="BUILD_CONTEXT_MAX_REQUEST_BYTES")
    assert str(DECLARED) in reply.json()["error"]


def test_an_expect_continue_sender_gets_the_413_and_no_invitation(server: FunctionServer) -> None:
    headers = {"Content-Length": str(DECLARED), "Expect": "100-continue"}
    with connect(server) as sock:
        sock.sendall(head(headers=headers))
        reply = read_reply(sock)
    assert_refused(reply, 413, "body_too_large")  # the first status line: no 100 Continue


def test_a_streaming_sender_is_answered_long_before_its_body_is_sent(
    server: FunctionServer,
) -> None:
    """A client that just sends (no Expect): the server stops reading at the headers, so what
    the client gets rid of is what the kernel buffers, not the 200 MiB (nor the 16 MiB limit)."""
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(head(headers={"Content-Length": str(DECLARED)}))
        sender = Trickle(sock, b"x" * DECLARED, 64 * 1024, 0)
        sender.start()
        reply = read_reply(sock)
        sender.join(PATIENCE)
    assert sender.sent < 16 * 1024 * 1024, f"the server took {sender.sent} bytes of the body"
    assert_refused(reply, 413, "body_too_large")


def test_a_chunked_body_is_counted_as_it_streams_and_cut_off_at_the_limit(
    start_server: StartServer,
) -> None:
    server = start_server(BUILD_CONTEXT_MAX_REQUEST_BYTES=str(SMALL_LIMIT))
    chunk = b"1000\r\n" + b"y" * 0x1000 + b"\r\n"
    with connect(server) as sock:
        sock.sendall(head(headers={"Transfer-Encoding": "chunked"}))
        sock.sendall(chunk * (SMALL_LIMIT // 0x1000 + 2))  # past the limit, and never ended
        reply = read_reply(sock)
    assert_refused(reply, 413, "body_too_large", names="chunked")


def test_a_chunked_body_within_the_limit_still_creates(server: FunctionServer) -> None:
    headers, body = encode(example("python"))
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
        for i in range(0, len(body), 100)
    )
    with connect(server) as sock:
        sock.sendall(head(headers={**headers, "Transfer-Encoding": "chunked"}))
        sock.sendall(framed + b"0\r\n\r\n")
        reply = read_reply(sock)
    assert reply.status == 200 and reply.headers["ce-type"] == "buildcontext.created", reply


def test_chunk_lines_are_bounded(server: FunctionServer) -> None:
    """waitress keeps an unfinished chunk-size line and scans all of it at every read: a long
    one costs time quadratic in its length, on the thread that serves every connection."""
    with connect(server) as sock:
        sock.sendall(head(headers={"Transfer-Encoding": "chunked"}))
        sock.sendall(b"1;" + b"e" * 64 * 1024)
        reply = read_reply(sock)
    assert_refused(reply, 400, "bad_chunk", names="4096")


def test_headers_are_bounded(server: FunctionServer) -> None:
    with connect(server) as sock:
        sock.sendall(head(headers={"X-Padding": "p" * 40 * 1024, "Content-Length": "0"}))
        reply = read_reply(sock)
    assert_refused(reply, 431, "headers_too_large", names="BUILD_CONTEXT_MAX_HEADER_BYTES")


# --- slow senders ---------------------------------------------------------------------------


def test_slow_senders_are_cut_off_after_the_read_timeout_and_others_are_served(
    start_server: StartServer,
) -> None:
    """A byte every 0.2 s never trips waitress's own timeout (120 s of silence); the read
    timeout bounds the whole request. The connect-and-say-nothing sender goes too."""
    server = start_server(BUILD_CONTEXT_READ_TIMEOUT_SECONDS="2")
    slow_head, body = event()
    quick_head = connect(server)
    quick_head.sendall(slow_head)
    trickles = [
        Trickle(connect(server), slow_head + body, 1, 0.2),  # slow headers
        Trickle(quick_head, body, 1, 0.2),  # a slow body
        Trickle(connect(server), b"", 1, 0.2),  # nothing at all
    ]
    started = time.monotonic()
    for trickle in trickles:
        trickle.start()
    created = server.send(example("go"))  # served meanwhile
    assert created.type == "buildcontext.created", created
    replies = [read_reply(t.sock) for t in trickles[:2]]
    trickles[2].sock.settimeout(PATIENCE)
    silent_closed = trickles[2].sock.recv(1) == b""
    took = time.monotonic() - started
    for trickle in trickles:
        trickle.stop.set()
        trickle.sock.close()
    for reply in replies:
        assert_refused(reply, 408, "read_timeout", names="BUILD_CONTEXT_READ_TIMEOUT_SECONDS")
    assert silent_closed, "a connection that sends nothing is closed too"
    assert trickles[0].sent < len(slow_head), "cut off within the headers"
    assert 0 < trickles[1].sent < len(body), "cut off within the body"
    assert took < PATIENCE


def test_slow_senders_hold_no_worker_thread(start_server: StartServer) -> None:
    """waitress hands a request to a worker thread only once it has arrived whole: thirty
    half-sent requests leave the one thread free for a whole one."""
    server = start_server(
        BUILD_CONTEXT_THREADS="1",
        BUILD_CONTEXT_PROCESSES="1",
        BUILD_CONTEXT_READ_TIMEOUT_SECONDS="120",
    )
    whole, body = event()
    stalled = []
    for index in range(30):
        sock = connect(server)
        sock.sendall(whole[: 40 + index] if index % 2 else whole + body[:10])
        stalled.append(sock)
    try:
        created = server.send(example("go"), timeout=PATIENCE)
        assert created.type == "buildcontext.created", created
        for sock in stalled:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # still waiting for the rest: no reply, not closed
    finally:
        for sock in stalled:
            sock.close()


# --- senders not known yet (BUILD_CONTEXT_AUTH=oidc) ---------------------------------------


@pytest.fixture
def issuer() -> Iterator[IssuerDouble]:
    yield from serving_issuer()


@pytest.fixture
def guarded(issuer: IssuerDouble, start_server: StartServer) -> FunctionServer:
    """Identity on, keys from the local issuer; the allowed subject is `SUBJECT`'s account."""
    return start_server(
        BUILD_CONTEXT_AUTH="oidc",
        BUILD_CONTEXT_NAMESPACE="ns",
        BUILD_CONTEXT_AUTH_DISCOVERY_URL=f"{issuer.url}/.well-known/openid-configuration",
        BUILD_CONTEXT_PROCESSES="1",
    )


def token_of(issuer: IssuerDouble, subject: str, kid: str = "key-1") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": ["build-context"], "sub": subject, "iat": now, "exp": now + 600}
    return jwt.encode(claims, issuer.keys[kid], algorithm="ES256", headers={"kid": kid})


def declared(authorization: str | None, path: str = "/") -> bytes:
    headers = {"Content-Length": str(DECLARED)}
    if authorization is not None:
        headers["Authorization"] = authorization
    return head(path, headers=headers)


def test_an_unknown_sender_is_refused_without_reading_its_body(
    issuer: IssuerDouble, guarded: FunctionServer
) -> None:
    """Refused at the headers, before the size: an unknown sender learns nothing of limits."""
    issuer.rotate("unpublished")
    unpublished = token_of(issuer, SUBJECT, "unpublished")
    issuer.keys.pop("unpublished")
    cases = [
        ("no token", None, 401, "missing_token"),
        ("not a JWT", "Bearer not-a-token", 401, "invalid_token"),
        ("not a bearer", "Basic dXNlcjpwYXNz", 401, "invalid_token"),
        ("a key the issuer does not have", f"Bearer {unpublished}", 401, "invalid_token"),
        (
            "an account no handler allows",
            f"Bearer {token_of(issuer, 'system:serviceaccount:ns:someone-else')}",
            403,
            "forbidden_subject",
        ),
        ("the probes take no body", None, 413, "body_not_taken"),
        (
            "an allowed sender, over the limit",
            f"Bearer {issuer.token('key-1')}",
            413,
            "body_too_large",
        ),
    ]
    for name, authorization, status, reason in cases:
        path = "/health/readiness" if "probes" in name else "/"
        with connect(guarded) as sock:
            sock.sendall(declared(authorization, path))
            reply = read_reply(sock)
        assert reply.status == status and reply.json()["reason"] == reason, (name, reply)
        if status == 401:
            assert reply.headers["www-authenticate"].startswith("Bearer"), name
    refused = [
        line["reason"] for line in guarded.log_lines() if line.get("message") == "sender refused"
    ]
    assert refused == [case[3] for case in cases[:5]]
    created = guarded.send(example("python"), token=issuer.token("key-1"))
    assert created.type == "buildcontext.created", created


def test_a_slow_issuer_holds_up_no_other_connection(
    issuer: IssuerDouble, guarded: FunctionServer
) -> None:
    """The first token needs the issuer's keys: while the issuer takes its time, its requests
    wait unread (no `100 Continue`; of a body sent at once, one read is kept), and everyone else
    is answered. Then both go on."""
    issuer.answering.clear()
    token = f"Bearer {issuer.token('key-1')}"
    invited_head, body = event(Authorization=token, Expect="100-continue")
    invited = connect(guarded)
    invited.sendall(invited_head)
    assert issuer.asked.wait(PATIENCE), "the server never asked for the keys"
    padded = example("python")["sourceCode"] + "# " + "p" * 200_000 + "\n"
    eager_head, large = event(
        {**example("python"), "lambdaFunction": "large", "sourceCode": padded}, Authorization=token
    )
    eager = connect(guarded)
    eager.sendall(eager_head)
    eager_sender = Trickle(eager, large, 64 * 1024, 0)  # all at once, as far as buffers go
    eager_sender.start()
    assert requests.get(f"{guarded.url}/health/readiness", timeout=PATIENCE).ok
    with connect(guarded) as sock:
        sock.sendall(declared(None))
        assert read_reply(sock).status == 401
    for sock in (invited, eager):
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # no 100 Continue, no reply: the sender is not known yet
        sock.setblocking(True)
    issuer.answering.set()
    interim = read_reply_line(invited)
    assert interim == b"HTTP/1.1 100 Continue", interim
    invited.sendall(body)
    replies = [read_reply(invited), read_reply(eager)]
    eager_sender.join(PATIENCE)
    assert eager_sender.sent == len(large)
    for sock in (invited, eager):
        sock.close()
    for reply in replies:
        assert reply.status == 200 and reply.headers["ce-type"] == "buildcontext.created", reply


def read_reply_line(sock: socket.socket) -> bytes:
    sock.settimeout(PATIENCE)
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        data += sock.recv(1)
    return data.split(b"\r\n", 1)[0]
