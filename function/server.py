"""HTTP serving: parliament's Flask app under waitress, with a drain on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import parliament
import waitress

from . import func, workers
from .app import App
from .settings import Settings
from .telemetry import WSGIApp

log = logging.getLogger("build_context.server")
CONNECTION_LIMIT = 500
"""Open connections waitress serves at once (its default is 100). Callers keep connections
alive, so at the limit waitress stops accepting and new requests wait in the backlog until an
idle connection times out: 150 simultaneous requests stalled for 30 s. select() caps it below
1024 descriptors."""


class Gate:
    """Counts requests in flight, limits body size, and turns readiness off while draining.

    Also serves Prometheus on `/metrics`, outside the in-flight count so scrapes never delay
    a drain.
    """

    def __init__(self, app: WSGIApp, max_body: int, metrics: WSGIApp | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics
        self.draining = threading.Event()
        self._in_flight = 0
        self._lock = threading.Condition()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/health/readiness" and self.draining.is_set():
            return _json(start_response, "503 Service Unavailable", {"status": "draining"})
        if path == "/metrics" and self.metrics is not None:
            return self.metrics(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > self.max_body:
            return _json(
                start_response,
                "413 Request Entity Too Large",
                {
                    "error": f"request body is {length} bytes; the limit is {self.max_body} "
                    "(BUILD_CONTEXT_MAX_REQUEST_BYTES): send less source",
                    "status": 413,
                },
            )
        with self._lock:
            self._in_flight += 1
        try:
            return list(self.app(environ, start_response))
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    def drain(self, timeout: float, receiving: Callable[[], bool] = lambda: False) -> bool:
        """Wait until no request is in flight; False when the grace period ran out.

        `receiving` says whether the server still holds a request the app has not seen yet:
        one whose body is still arriving, one queued for a worker thread, or a reply not yet
        flushed. Those count as in flight too, or a SIGTERM in mid-upload would cut them off.
        """
        self.draining.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight or receiving():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _receiving(server: Any) -> bool:
    """Whether any connection has a request part-received, queued, or a reply unsent.

    Reads waitress's channel state (`request`, `requests`, `total_outbufs_len`; waitress is
    pinned). Idle keep-alive connections do not count: nothing is lost by closing them.
    """
    return any(
        channel.request is not None or channel.requests or channel.total_outbufs_len
        for channel in list(getattr(server, "active_channels", {}).values())
    )


def wsgi_app(app: App, metrics: WSGIApp | None = None) -> Gate:
    func.install(app)
    flask_app = parliament.server.create(func)
    flask_app.config["MAX_CONTENT_LENGTH"] = app.settings.max_request_bytes
    if metrics is None and app.exporters is not None:
        metrics = app.exporters.metrics_app
    return Gate(flask_app.wsgi_app, app.settings.max_request_bytes, metrics)


def run(settings: Settings, ready: Callable[[str, int], None] | None = None) -> int:
    """Serve until SIGTERM: in this process, or in `BUILD_CONTEXT_PROCESSES` workers."""
    sock = workers.listen(settings)
    count = workers.process_count(settings)
    if count == 1:
        serve(App.from_settings(settings), sock, ready)
        return 0

    def worker_main(
        worker: workers.Worker, sock: socket.socket, started: Callable[[], None]
    ) -> None:
        serve(App.from_settings(settings), sock, lambda host, port: started(), worker=worker)

    return workers.Supervisor(settings, count, worker_main).run(sock, ready)


def serve(
    app: App,
    sock: socket.socket,
    ready: Callable[[str, int], None] | None = None,
    *,
    worker: workers.Worker | None = None,
) -> None:
    """Serve `app` on the listening socket `sock` until SIGTERM/SIGINT, then drain; as worker
    `worker` of a supervisor, the socket is shared with the other workers
    (see function/workers.py)."""
    settings = app.settings
    shared = None
    if worker is not None and app.exporters is not None:
        shared = workers.SharedMetrics(app.exporters.registry, worker)
    gate = wsgi_app(app, shared.wsgi_app if shared else None)
    server = waitress.create_server(
        gate,
        threads=settings.threads,
        ident="build-context",
        clear_untrusted_proxy_headers=True,
        channel_timeout=120,
        connection_limit=CONNECTION_LIMIT,
        sockets=[sock],
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    runner = threading.Thread(target=server.run, name="waitress", daemon=True)
    runner.start()
    host, port = server.effective_host, server.effective_port
    log.info("serving", extra={"host": host, "port": int(port), "threads": settings.threads})
    if ready:
        ready(str(host), int(port))
    while not stop.wait(0.5):
        if worker is not None and worker.orphaned():
            log.warning("the supervisor is gone; stopping")
            break
    drained = gate.drain(settings.shutdown_grace_seconds, lambda: _receiving(server))
    log.info("stopping", extra={"drained": drained})
    server.close()
    if shared is not None:
        shared.close()
    app.close()
