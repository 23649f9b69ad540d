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

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Authenticate = Callable[[dict[str, Any]], "tuple[str, str, dict[str, str]] | None"]
"""Checks a request's sender: None to admit, else the status line, JSON body and headers of the
refusal."""


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

        `receiving` says whether the server still holds a request the app has not seen yet:
        one whose body is still arriving, one queued for a worker thread, or a reply not yet
        flushed. Those count as in flight too, or a SIGTERM in mid-upload would cut them off.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count or receiving():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True


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
    """Refuses a request whose sender `authenticate` does not admit, before its body is parsed
    (docs/security.md); the admitted sender is left in the environ for the handler. Served by
    function/edge.py, the sender is checked before the body is even read, and this only passes
    its verdict on; it stands for any other server (and tests that call the app directly)."""

    authenticate: Authenticate

    def answer(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        refused = self.authenticate(environ)
        if refused is None:
            return None
        status, body, headers = refused
        data = body.encode()
        start_response(status, [*headers.items(), ("Content-Length", str(len(data)))])
        return [data]


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
