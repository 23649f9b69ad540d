"""The serving edge: waitress, refusing what must be refused before a request is read.

waitress reads a request whole on its event-loop thread (the headers, then the body into memory
or a temporary file) and only then hands it to a worker thread and the WSGI app: a WSGI layer
sees a body once it has arrived. So what must be refused before the body is read is refused
here, in waitress's parser and channel (subclassed; waitress is pinned, and tests/test_edge.py
fails if its behaviour changes):

- when the headers end: the sender (BUILD_CONTEXT_AUTH=oidc: 401/403 without reading the body),
  then the declared size (413 above BUILD_CONTEXT_MAX_REQUEST_BYTES); a body sent to a path
  open to anyone (the probes, the scrape) is refused too;
- while a body arrives: a chunked body is counted as it streams, framing included (413 at the
  limit), and its chunk lines are bounded (waitress re-scans an unfinished one at every read);
- over time: a connection has BUILD_CONTEXT_READ_TIMEOUT_SECONDS to deliver a request, from its
  first byte (from the connect, for its first request); waitress's own timeout counts silence.

A refusal is a JSON reply naming the limit, sent with `Connection: close`; the connection is
closed once it is sent, and what the sender had not sent yet is never read.

Checking a token needs the issuer's keys. With the keys cached it is CPU only (one signature
check) and runs right here on the event loop; when they must be fetched (first use, expired
cache, a key id not seen yet) the connection stops being read and the check runs on a thread of
its own, so a slow issuer holds up no other connection.

The server these channels belong to (accepting, and stopping without dropping a request) is
`EdgeServer` in function/server.py.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.receiver import ChunkedReceiver
from waitress.task import WSGITask
from waitress.utilities import (
    Error,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    ServerNotImplemented,
)

from .auth import KeysPending
from .boundary import quote
from .http_errors import HttpError

log = logging.getLogger("build_context.edge")

CHUNK_LINE_MAX = 4096
"""Longest chunk-size line (extensions included) of a chunked body, as in Go's net/http."""

CheckSender = Callable[[str, "str | None", bool], "dict[str, Any] | Answer | None"]
"""(path, Authorization header, wait) -> what the request's WSGI environ gets (the verified
sender), the Answer that refuses it, or None for a path open to anyone (which takes no body).
With `wait` False it raises KeysPending rather than wait for the network."""


@dataclass(frozen=True)
class Limits:
    max_body: int
    max_header: int
    read_timeout: int
    idle_timeout: int


class Answer(Error):  # type: ignore[misc]  # waitress is untyped
    """A reply made at the edge, reported (its log line, its metric) when it is written: on a
    worker thread, so that this is no work of the event loop."""

    def __init__(self, error: HttpError, report: Callable[[], None]) -> None:
        super().__init__("")
        self.code = error.status
        self.reason = HTTPStatus(error.status).phrase
        self.error = error
        self.report = report

    @classmethod
    def of(cls, code: int, why: str, message: str) -> Answer:
        """A JSON refusal with a one-line log (`why` is its short reason)."""

        def report() -> None:
            log.warning("request refused", extra={"status": code, "reason": why})

        return cls(HttpError(code, message, why), report)

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        self.report()
        body, headers = self.error.rendered()
        return self.error.status_line, list(headers.items()), body.encode()


def body_too_large(limits: Limits, length: int | None) -> Answer:
    size = f"is {length} bytes," if length is not None else "(chunked, framing included) runs"
    return Answer.of(
        413,
        "body_too_large",
        f"the request body {size} over the limit of {limits.max_body} bytes "
        "(BUILD_CONTEXT_MAX_REQUEST_BYTES): send less source, or raise the setting",
    )


def _waitress_answer(error: Any, limits: Limits) -> Answer:
    """waitress's own refusals as JSON; its message is cut at the first quote, where it starts
    quoting the request."""
    if isinstance(error, Answer):
        return error
    if isinstance(error, RequestHeaderFieldsTooLarge):
        return Answer.of(
            431,
            "headers_too_large",
            f"the request line and headers exceed {limits.max_header} bytes "
            "(BUILD_CONTEXT_MAX_HEADER_BYTES): send fewer or shorter headers",
        )
    if isinstance(error, RequestEntityTooLarge):
        return body_too_large(limits, None)
    if isinstance(error, ServerNotImplemented):
        # waitress says 501 (RFC 9112's SHOULD); Knative retries a 5xx, and the fault is the sender's
        return Answer.of(
            400,
            "bad_http",
            "a Transfer-Encoding other than chunked is not read here: send a Content-Length, "
            "or Transfer-Encoding: chunked",
        )
    said = str(error.body).split('"', 1)[0].strip()
    code = int(error.code) if error.code < 500 else 400
    return Answer.of(code, "bad_http", f"{error.reason}: {said}; send well-formed HTTP/1.1")


class EdgeParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, with the edge's checks when the headers end and while a body
    arrives. `held` is not None while the sender check waits for the network: the channel stops
    reading, and what had arrived is kept (one read at most) until the verdict."""

    def __init__(self, adj: Adjustments, channel: EdgeChannel) -> None:
        super().__init__(adj)
        self.channel = channel
        self.limits = channel.edge.limits
        self.environ: dict[str, Any] = {}
        self.held: bytes | None = None
        self._paused = (False, False)  # (completed, expect_continue) as they were at the pause

    def received(self, data: bytes) -> int:
        if self.held is not None:
            self.held += data
            return len(data)
        in_headers = not self.headers_finished and not self.completed
        consumed: int = super().received(data)
        if in_headers and self.headers_finished and not self.empty:
            self._headers_ended()
        elif not in_headers:
            self._body_arrived()
        if self.error is not None and self.held is None:
            self.refuse(_waitress_answer(self.error, self.limits))
            return len(data)  # what follows a refusal is never parsed
        return consumed

    def refuse(self, answer: Answer) -> None:
        self.error = answer
        self.completed = True
        self.expect_continue = False  # never invite a body that will not be read
        self.held = None

    def decide(self, verdict: dict[str, Any] | Answer | None) -> bytes:
        """Apply a verdict that had to wait; what arrived meanwhile, to be parsed now."""
        held, self.held = self.held or b"", None
        self.completed, self.expect_continue = self._paused
        if isinstance(verdict, Answer):
            self.refuse(verdict)
        else:
            self._admitted(verdict)
        return b"" if self.error is not None else held

    def time_out(self) -> None:
        if not self.headers_finished:  # what an error reply needs, as waitress does for 431
            self.parse_header(b"GET / HTTP/1.0\r\n")
        self.refuse(
            Answer.of(
                408,
                "read_timeout",
                f"the request did not arrive within {self.limits.read_timeout} s "
                "(BUILD_CONTEXT_READ_TIMEOUT_SECONDS): send it at once, not byte by byte",
            )
        )

    def _headers_ended(self) -> None:
        if self.error is not None and not isinstance(self.error, RequestEntityTooLarge):
            return  # not HTTP we read: no sender to check
        check = self.channel.edge.check
        if check is None:
            self._admitted({})
            return
        try:
            verdict = verdict_of(check, self.path, self.headers.get("AUTHORIZATION"), wait=False)
        except KeysPending:
            self.held = b""
            self._paused = (self.completed, self.expect_continue)
            self.completed = self.expect_continue = False
            self.channel.check_later(self)
            return
        if isinstance(verdict, Answer):
            self.refuse(verdict)
        else:
            self._admitted(verdict)

    def _admitted(self, environ: dict[str, Any] | None) -> None:
        """The sender is known, or needs not be: now the size."""
        if environ is None and (self.content_length or self.chunked):
            self.refuse(
                Answer.of(
                    413,
                    "body_not_taken",
                    f"{quote(self.path, 40)} takes no request body: send none",
                )
            )
        elif isinstance(self.error, RequestEntityTooLarge):
            self.refuse(body_too_large(self.limits, self.content_length))
        else:
            self.environ = environ or {}

    def _body_arrived(self) -> None:
        body = self.body_rcv
        if isinstance(self.error, RequestEntityTooLarge):  # waitress counted a chunked body
            self.refuse(body_too_large(self.limits, None))
        elif isinstance(body, ChunkedReceiver) and not self.completed and self._long_line(body):
            self.refuse(
                Answer.of(
                    400,
                    "bad_chunk",
                    f"a chunk-size line is over {CHUNK_LINE_MAX} bytes, or the trailer over "
                    f"{self.limits.max_header}: send chunks without long extensions",
                )
            )

    def _long_line(self, body: ChunkedReceiver) -> bool:
        return len(body.control_line) > CHUNK_LINE_MAX or len(body.trailer) > self.limits.max_header


def verdict_of(
    check: CheckSender, path: str, authorization: str | None, *, wait: bool
) -> dict[str, Any] | Answer | None:
    """What `check` says, a bug in it a 500 (it is logged)."""
    try:
        return check(path, authorization, wait)
    except KeysPending:
        raise
    except Exception:
        log.exception("sender check failed")
        return Answer.of(500, "internal", "internal error while checking the sender; retry")


class EdgeTask(WSGITask):  # type: ignore[misc]
    """Hands the edge's verdict (the verified sender) to the app in the WSGI environ."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ.update(self.request.environ)
        return environ


class EdgeHost(Protocol):
    """What a channel needs of its server (`EdgeServer`, function/server.py, which imports this
    module: the server is named by what it offers, so the two do not import each other)."""

    edge: Edge


class EdgeChannel(HTTPChannel):  # type: ignore[misc]
    """One connection: stops reading while a sender check waits, and times out a request that
    takes longer than the read timeout to arrive."""

    task_class = EdgeTask

    def __init__(self, server: EdgeHost, sock: socket.socket, *args: Any, **kw: Any) -> None:
        self.edge: Edge = server.edge
        self.parser_class = functools.partial(EdgeParser, channel=self)
        self.receiving_since: float | None = time.monotonic()
        """When the request now arriving began (for the first: the connect); None when idle."""
        super().__init__(server, sock, *args, **kw)

    def readable(self) -> bool:
        request = self.request
        return bool(super().readable()) and not (request is not None and request.held is not None)

    def received(self, data: bytes) -> bool:
        if self.receiving_since is None:
            self.receiving_since = time.monotonic()
        result: bool = super().received(data)
        if self.request is None:
            self.receiving_since = None
        return result

    def service(self) -> None:
        super().service()
        if self.request is not None:  # it arrived behind the one just served: its time starts now
            self.receiving_since = time.monotonic()

    def check_later(self, request: EdgeParser) -> None:
        """Check the sender on the waiting thread; the verdict comes back to the event loop."""
        check = self.edge.check
        assert check is not None
        path, authorization = request.path, request.headers.get("AUTHORIZATION")

        def run() -> None:
            verdict = verdict_of(check, path, authorization, wait=True)
            self.server.trigger.pull_trigger(lambda: self._resume(request, verdict))

        self.server.waiting.submit(run)

    def _resume(self, request: EdgeParser, verdict: dict[str, Any] | Answer | None) -> None:
        if self.request is not request or request.held is None or not self.connected:
            return  # timed out or gone meanwhile
        held = request.decide(verdict)
        if request.completed:
            self._hand_over(request)
        elif not held and request.expect_continue and not self.requests and not self.sent_continue:
            self.send_continue()
        if held:
            self.received(held)

    def enforce_read_timeout(self, now: float) -> None:
        since = self.receiving_since
        if since is None or self.requests or now - since < self.edge.limits.read_timeout:
            return
        request = self.request
        if request is None:  # connected, and sent nothing
            self.will_close = True
            return
        request.time_out()
        self._hand_over(request)

    def _hand_over(self, request: EdgeParser) -> None:
        """Queue a request completed off the read path, as waitress's `received` does (queued
        before it is cleared: the drain must always see it, server.py's `EdgeServer.receiving`)."""
        with self.requests_lock:
            self.requests.append(request)
            self.request = None
            self.receiving_since = None
            self.sent_continue = False
            if len(self.requests) == 1:
                self.server.add_task(self)


class Waiting:
    """The one thread that runs sender checks which wait for the network. `submit` is called
    on the event loop only."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sender-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # the server closed under it: the next job may still matter
                log.exception("sender check job failed")


@dataclass(frozen=True)
class Edge:
    limits: Limits
    check: CheckSender | None = None
    """None when every sender is welcome (BUILD_CONTEXT_AUTH=off)."""
