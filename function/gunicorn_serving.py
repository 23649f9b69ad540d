"""EXPERIMENT (issue 12, item 7): the same app under gunicorn's arbiter and gthread workers.

Selected by BUILD_CONTEXT_EXPERIMENT_SERVER=gunicorn, to run the very tests and bench that
measure function/workers.py + server.py's waitress drain. Our listening socket (bound by
workers.listen, so start-up errors stay ours) is handed to the arbiter; every worker builds its
own App; /metrics merges the siblings through workers.SharedMetrics, with worker indices handed
out in pre_fork.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from gunicorn import sock as gsock  # type: ignore[import-untyped]
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

from . import workers
from .app import App
from .settings import Settings

log = logging.getLogger("build_context.server")


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, sock: socket.socket, count: int) -> None:
        self.settings = settings
        self.sock = sock
        self.count = count
        self.folder = Path(tempfile.mkdtemp(prefix="build-context-"))
        self.index = -1
        self.app: App | None = None
        self.shared: workers.SharedMetrics | None = None
        self.in_flight: Any = None
        super().__init__()

    def load_config(self) -> None:
        from .server import CONNECTION_LIMIT

        s = self.settings
        for key, value in {
            "bind": [f"{s.host}:{s.port}"],
            "workers": self.count,
            "worker_class": "gthread",
            "threads": s.threads,
            "graceful_timeout": math.ceil(s.shutdown_grace_seconds),
            "timeout": 120,
            "keepalive": 120,
            "worker_connections": CONNECTION_LIMIT,
            "loglevel": "warning",
            "pre_fork": self._pre_fork,
            "post_fork": self._post_fork,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
            "on_exit": lambda arbiter: shutil.rmtree(self.folder, ignore_errors=True),
        }.items():
            self.cfg.set(key, value)

    def _pre_fork(self, arbiter: Any, worker: Any) -> None:
        taken = {getattr(w, "index", -1) for w in arbiter.WORKERS.values()}
        worker.index = min(set(range(self.count)) - taken)

    def _post_fork(self, arbiter: Any, worker: Any) -> None:
        self.index = worker.index
        for handler in logging.getLogger().handlers:
            handler.addFilter(workers.WorkerLogFilter(worker.index))

    def load(self) -> Any:
        from .server import wsgi_app

        self.app = App.from_settings(self.settings)
        assert self.app.exporters is not None
        me = workers.Worker(self.index, self.count, self.folder, os.getppid())
        self.shared = workers.SharedMetrics(self.app.exporters.registry, me)
        readiness, self.in_flight = wsgi_app(self.app, self.shared.wsgi_app)
        self.readiness = readiness
        log.info("serving", extra={"threads": self.settings.threads})
        return readiness

    def _post_worker_init(self, worker: Any) -> None:
        def on_term(signum: int, frame: Any) -> None:
            self.readiness.draining.set()
            worker.handle_exit(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

    def _worker_exit(self, arbiter: Any, worker: Any) -> None:
        if self.in_flight is None:
            return
        log.info("stopping", extra={"drained": self.in_flight.drain(0)})
        if self.shared is not None:
            self.shared.close()
        if self.app is not None:
            self.app.close()

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        log.error("worker exited", extra={"worker": worker.index, "pid": worker.pid})


def run(settings: Settings, sock: socket.socket, count: int) -> int:
    server = GunicornServer(settings, sock, count)
    arbiter = Arbiter(server)
    address = sock.getsockname()[:2]
    arbiter.LISTENERS = [
        gsock.TCPSocket(address, arbiter.cfg, arbiter.log, fd=os.dup(sock.fileno()))
    ]
    sock.close()
    try:
        arbiter.run()
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0
