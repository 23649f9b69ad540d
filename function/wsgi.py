"""The WSGI layers around parliament's Flask app, each with one job.

From the outside in: `Readiness` (503 on `/health/readiness` while draining), `MetricsRoute`
(`/metrics`, outside the in-flight count so a scrape never delays a drain), `SenderCheck`
(401/403/503 for a sender without an acceptable token, with BUILD_CONTEXT_AUTH=oidc, unless the
server's edge checked it already) and `InFlight` (counts the requests the app handles, and waits
for them to finish on SIGTERM). The body limit and the sender check come before the body is
read, at the server's edge (function/edge.py): no WSGI layer sees a request before that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .edge import Answer, CheckSender, verdict_of

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SENDER = "build_context.sender"
"""WSGI environ key of the verified `auth.Sender`, left by the sender check for the handler."""


def json_reply(
    start_response: Callable[..., Any], status: str, body: dict[str, Any]
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class InFlight:
    """Counts the requests `app` is handling; `drain` waits until there are none."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._count = 0
        self._changed = threading.Condition()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        with self._changed:
            self._count += 1
        try:
            return list(self.app(environ, start_response))
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def drain(self, timeout: float, receiving: Callable[[], bool] = lambda: False) -> bool:
        """Wait until no request is in flight; False when `timeout` ran out first.

        `receiving` says whether the server still holds a request the app has not answered:
        one whose body is still arriving, one queued for a worker thread, or a reply not yet
        flushed. Those count as in flight too, or a SIGTERM in mid-upload would cut them off.
        It is asked with no lock held (the server may take a moment to answer).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                idle = self._changed.wait_for(
                    lambda: not self._count, max(0.0, deadline - time.monotonic())
                )
            if idle and not receiving():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


@dataclass(eq=False)
class Layer:
    """A layer that answers some requests itself (`answer` returns the body) and passes every
    other request on to `app` (`answer` returns None)."""

    app: WSGIApp

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        answered = self.answer(environ, start_response)
        return self.app(environ, start_response) if answered is None else answered

    def answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        raise NotImplementedError


@dataclass(eq=False)
class SenderCheck(Layer):
    """Refuses a request whose sender `check` does not admit, before its body is parsed
    (docs/security.md); the admitted sender is left in the environ for the handler. Served by
    function/edge.py, the same check ran before the body was even read, and this passes; it
    stands for any other server (and tests that call the app directly)."""

    check: CheckSender

    def answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        if SENDER in environ:  # the edge checked it
            return None
        path, authorization = environ.get("PATH_INFO", ""), environ.get("HTTP_AUTHORIZATION")
        verdict = verdict_of(self.check, path, authorization, wait=True)
        if not isinstance(verdict, Answer):
            environ.update(verdict or {})
            return None
        status, headers, body = verdict.to_response()
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


@dataclass(eq=False)
class MetricsRoute(Layer):
    """Sends `/metrics` to the Prometheus app, everything else on to `app`."""

    metrics: WSGIApp | None

    def answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        if self.metrics is None or environ.get("PATH_INFO", "") != "/metrics":
            return None
        return self.metrics(environ, start_response)


@dataclass(eq=False)
class Readiness(Layer):
    """Answers `/health/readiness` with 503 once `draining` is set, so Knative stops routing
    here; until then the app answers it."""

    draining: threading.Event = field(default_factory=threading.Event, init=False)

    def answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        if not self.draining.is_set() or environ.get("PATH_INFO", "") != "/health/readiness":
            return None
        return json_reply(start_response, "503 Service Unavailable", {"status": "draining"})
