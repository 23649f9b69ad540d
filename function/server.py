"""HTTP serving: parliament's Flask app under waitress, with a drain on SIGTERM."""

from __future__ import annotations

import functools
import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import parliament

from . import http_errors, outcomes, workers
from .app import App
from .auth import Refused
from .edge import Answer, CheckSender, Edge, EdgeServer, Limits
from .func import Function
from .settings import Settings
from .wsgi import SENDER, InFlight, MetricsRoute, Readiness, SenderCheck, WSGIApp

log = logging.getLogger("build_context.server")
CONNECTION_LIMIT = 500
"""Open connections waitress serves at once (its default is 100). Callers keep connections
alive, so at the limit waitress stops accepting and new requests wait in the backlog until an
idle connection times out: 150 simultaneous requests stalled for 30 s. select() caps it below
1024 descriptors."""


def _receiving(server: Any) -> bool:
    """Whether any connection has a request part-received, queued, or a reply unsent.

    Reads waitress's channel state (`request`, `requests`, `total_outbufs_len`; waitress is
    pinned). Idle keep-alive connections do not count: nothing is lost by closing them.
    """
    return any(
        channel.request is not None or channel.requests or channel.total_outbufs_len
        for channel in list(getattr(server, "active_channels", {}).values())
    )


def wsgi_app(app: App, metrics: WSGIApp | None = None) -> tuple[Readiness, InFlight]:
    """The app to serve (its outermost layer, `Readiness`) and the in-flight count to drain:
    parliament's Flask app around `Function(app)`, built here for this `app` alone."""
    flask_app = parliament.server.create(Function(app))
    flask_app.config["MAX_CONTENT_LENGTH"] = app.settings.max_request_bytes
    if metrics is None and app.exporters is not None:
        metrics = app.exporters.metrics_app
    in_flight = InFlight(flask_app.wsgi_app)
    check = sender_check(app)
    checked: WSGIApp = in_flight if check is None else SenderCheck(in_flight, check)
    return Readiness(MetricsRoute(checked, metrics)), in_flight


def edge(app: App) -> Edge:
    """What the server refuses before a request reaches the app (function/edge.py)."""
    settings = app.settings
    limits = Limits(
        settings.max_request_bytes,
        settings.max_header_bytes,
        settings.read_timeout_seconds,
        settings.idle_timeout_seconds,
    )
    return Edge(limits, sender_check(app))


def sender_check(app: App) -> CheckSender | None:
    """With BUILD_CONTEXT_AUTH=oidc, the sender check of every request, from its headers: the
    verified sender for the WSGI environ, or the refusal (reported when it is sent)."""
    senders = app.senders
    if senders is None:
        return None

    def check(path: str, authorization: str | None, wait: bool) -> dict[str, Any] | Answer | None:
        try:
            sender = senders.admit(path, authorization, wait=wait)
        except Refused as refused:
            report = functools.partial(outcomes.refused, app.telemetry, refused)
            return Answer(http_errors.refused(refused), report)
        return None if sender is None else {SENDER: sender}

    return check


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
    readiness, in_flight = wsgi_app(app, shared.wsgi_app if shared else None)
    server = EdgeServer(
        readiness,
        sock,
        edge(app),
        threads=settings.server_threads,
        ident="build-context",
        clear_untrusted_proxy_headers=True,
        connection_limit=CONNECTION_LIMIT,
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
    log.info("serving", extra={"host": host, "port": int(port), "threads": settings.server_threads})
    if ready:
        ready(str(host), int(port))
    while not stop.wait(0.5):
        if worker is not None and worker.orphaned():
            log.warning("the supervisor is gone; stopping")
            break
    readiness.draining.set()
    drained = in_flight.drain(settings.shutdown_grace_seconds, lambda: _receiving(server))
    log.info("stopping", extra={"drained": drained})
    server.close()
    if shared is not None:
        shared.close()
    app.close()
