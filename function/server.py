"""HTTP serving: parliament's Flask app under waitress, with a drain on SIGTERM.

`serve(app, sock)` serves one App (built by `App.from_settings`, one per process) on a listening
socket: `wsgi_app` wraps `Function(app)` (func.py) in the WSGI layers (wsgi.py), `EdgeServer`
accepts connections and hands them to the edge's channels (edge.py). On SIGTERM readiness turns
503, and the process stops only once every request it took has its reply: those in flight,
then, having stopped accepting, those it accepted meanwhile or that waited in the backlog.
"""

from __future__ import annotations

import functools
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import parliament
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer

from . import http_errors, outcomes, workers
from .app import App
from .auth import Refused
from .edge import Answer, CheckSender, Edge, EdgeChannel, Limits, Waiting
from .func import Function
from .settings import Settings
from .wsgi import SENDER, InFlight, MetricsRoute, Readiness, SenderCheck, WSGIApp

log = logging.getLogger("build_context.server")
T = TypeVar("T")
CONNECTION_LIMIT = 500
"""Open connections waitress serves at once (its default is 100). Callers keep connections
alive, so at the limit waitress stops accepting and new requests wait in the backlog until an
idle connection times out: 150 simultaneous requests stalled for 30 s. select() caps it below
1024 descriptors."""
MAINTENANCE_SECONDS = 1
"""How often the event loop looks for connections past a timeout (waitress's cleanup_interval;
its default of 30 s would let a timeout overrun by as much)."""
LOOP_ANSWER_SECONDS = 5.0
"""How long the drain waits for the event loop to answer whether a request is still arriving
(it answers between two reads; a busy machine may take a while)."""


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


class EdgeServer(TcpWSGIServer):  # type: ignore[misc]  # waitress is untyped
    """waitress's TCP server on an open listening socket, with the edge's channels."""

    channel_class = EdgeChannel

    def __init__(self, app: Any, sock: socket.socket, edge: Edge, **adjustments: Any) -> None:
        self.edge = edge
        self.waiting = Waiting()
        limits = edge.limits
        adj = Adjustments(
            sockets=[sock],
            channel_timeout=limits.idle_timeout,
            cleanup_interval=MAINTENANCE_SECONDS,
            # waitress refuses at its limit; ours are the largest accepted
            max_request_header_size=limits.max_header + 1,
            max_request_body_size=limits.max_body + 1,
            **adjustments,
        )
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(app, _sock=sock, adj=adj, sockinfo=sockinfo, bind_socket=False)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections: channel_timeout
        moment = time.monotonic()
        for channel in list(self.active_channels.values()):
            channel.enforce_read_timeout(moment)

    # --- stopping: these run on the event loop (`on_loop`), which owns every socket ----------

    def on_loop(self, job: Callable[[], T], timeout: float) -> T | None:
        """`job()` run on the event loop between two reads, when no connection is half-read;
        None when the loop did not run it within `timeout` seconds."""
        done = threading.Event()
        result: list[T] = []

        def run() -> None:
            try:
                result.append(job())
            finally:
                done.set()

        self.trigger.pull_trigger(run)
        return result[0] if done.wait(timeout) and result else None

    def stop_accepting(self) -> None:
        """Accept what waits in the listen backlog (each connection was made before we stopped:
        ours to answer, and once every worker stops, no one else's), then accept no more: the
        listening socket is closed in this process (other workers keep theirs open). The
        timeouts are still enforced."""
        backlog = select.poll()
        backlog.register(self.socket, select.POLLIN)
        for _ in range(self.adj.connection_limit):  # bounded: a failing accept stays readable
            if not backlog.poll(0):
                break
            self.handle_accept()
        self.accepting = False
        self.socket.close()

    def close_all(self) -> None:
        """Close every connection, the trigger and the listener here on the loop, which then
        ends: it runs while its map holds a socket. Closed from another thread, a socket the
        loop polls next fails its select() (EBADF) and kills the loop's thread."""
        for dispatcher in list(self._map.values()):
            dispatcher.close()

    def receiving(self) -> bool:
        """Whether a connection holds a request not answered yet: arrived but not read (a new
        connection's, or the next on a kept-alive one), part-read, queued, or its reply unsent.
        Reads waitress's channel state (`request`, `requests`, `total_outbufs_len`; waitress is
        pinned). An idle connection does not count: nothing is lost by closing it."""
        return any(
            channel.request is not None
            or channel.requests
            or channel.total_outbufs_len
            or _unread(channel.socket)
            for channel in list(self.active_channels.values())
        )


def _unread(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (BlockingIOError), or closed
        return False


def drain(server: EdgeServer, in_flight: InFlight, grace: float) -> bool:
    """Wait, at most `grace` seconds, until every request this process took has its reply: first
    those in flight, still accepting (what arrives meanwhile is taken here or by a sibling
    worker); then, having stopped accepting, those accepted or waiting until then. False when
    time ran out."""
    deadline = time.monotonic() + grace

    def receiving() -> bool:
        return server.on_loop(server.receiving, LOOP_ANSWER_SECONDS) is not False

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    in_flight.drain(grace, receiving)
    server.on_loop(server.stop_accepting, left())
    return in_flight.drain(left(), receiving)


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
    drained = drain(server, in_flight, settings.shutdown_grace_seconds)
    log.info("stopping", extra={"drained": drained})
    if server.on_loop(server.close_all, LOOP_ANSWER_SECONDS) is None:
        server.close()  # the loop is stuck: close from here, as waitress itself would
    runner.join(LOOP_ANSWER_SECONDS)
    server.task_dispatcher.shutdown()
    if shared is not None:
        shared.close()
    app.close()
