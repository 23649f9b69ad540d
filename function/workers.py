"""Several server processes on one port, so that the server can use more than one core.

One Python process runs Python on one core at a time. With `BUILD_CONTEXT_PROCESSES` above 1
(by default: two per CPU the container may use, at most 4), the process started by
`python -m function` becomes a supervisor: it binds the port, forks the workers, which share the
listening socket and each build their own stores, telemetry and waitress threads, forwards
SIGTERM/SIGINT to them and waits for their drains, and replaces a worker that dies. It serves no
request itself.

`/metrics` is answered by whichever worker the scrape reaches, for all of them: each worker
also serves its own registry on a Unix socket in the supervisor's private folder, and the one
that is scraped adds its siblings' series, each labelled `worker="<index>"`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket
import socketserver
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("build_context.workers")

RESTARTS_ALLOWED = 5
"""Workers replaced within `RESTART_WINDOW_SECONDS` before the supervisor gives up (exit 1) and
lets Kubernetes restart the container: a crash loop is better visible than hidden."""
RESTART_WINDOW_SECONDS = 60.0
PEER_TIMEOUT_SECONDS = 2.0
STOP_MARGIN = 10.0
"""Seconds past BUILD_CONTEXT_SHUTDOWN_GRACE_SECONDS after which a worker that has not stopped
is killed (it drains for the grace period, then closes its app)."""
_SIGNALS = {signal.SIGTERM, signal.SIGINT}


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2: `<quota> <period>` in microseconds, or `max <period>` without a CPU limit."""


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (the
    container's CPU limit, rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


AUTO_PROCESSES_PER_CPU = 2
"""`BUILD_CONTEXT_PROCESSES=0` starts two processes per usable CPU (each with few threads): a
thread of one process waits for the GIL behind its siblings after every system call, so under a
burst more processes of fewer threads spend less CPU per request than one of many threads
(docs/performance.md, "Processes and threads")."""
AUTO_PROCESSES_MAX = 4
"""... but no more than this: each costs 60-70 MiB idle and more while parsing large sources,
and a container without a CPU limit would otherwise start two per CPU of the node."""


def process_count(settings: Settings, cpus: int | None = None) -> int:
    """Worker processes to start; `cpus` (default: the usable ones) for the automatic count."""
    if settings.processes:
        return settings.processes
    return min(
        AUTO_PROCESSES_PER_CPU * (usable_cpus() if cpus is None else cpus), AUTO_PROCESSES_MAX
    )


@dataclass(frozen=True)
class Worker:
    """Who a worker process is: its index among `count`, and where its siblings listen."""

    index: int
    count: int
    folder: Path
    supervisor: int

    def metrics_socket(self, index: int) -> Path:
        return self.folder / f"metrics-{index}.sock"

    def orphaned(self) -> bool:
        """The supervisor is gone (killed without a chance to stop us): time to stop."""
        return os.getppid() != self.supervisor


class WorkerLogFilter(logging.Filter):
    """Adds `worker` to every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


class SharedMetrics:
    """This worker's registry for its siblings, and all workers' series for a scrape."""

    def __init__(self, registry: CollectorRegistry, worker: Worker) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.registry = registry
        self.worker = worker
        path = worker.metrics_socket(worker.index)
        path.unlink(missing_ok=True)
        own = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(own.exposition())

        self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-peer", daemon=True
        )
        self._thread.start()
        merged = CollectorRegistry(auto_describe=False)
        merged.register(self)
        self.wsgi_app = make_wsgi_app(merged)

    def exposition(self) -> bytes:
        from prometheus_client.openmetrics.exposition import generate_latest

        text: bytes = generate_latest(self.registry)  # type: ignore[no-untyped-call]
        return text

    def _fetch(self, index: int) -> bytes | None:
        if index == self.worker.index:
            return self.exposition()
        chunks = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.settimeout(PEER_TIMEOUT_SECONDS)
                peer.connect(str(self.worker.metrics_socket(index)))
                while chunk := peer.recv(65536):
                    chunks.append(chunk)
        except OSError as error:  # a worker being replaced: its series are missing this once
            log.warning(
                "metrics of a worker unavailable", extra={"peer": index, "error": str(error)}
            )
            return None
        return b"".join(chunks)

    def collect(self) -> Iterator[Metric]:
        """Every worker's families, samples labelled by worker (Prometheus sums them)."""
        from prometheus_client.metrics_core import Metric
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        for index in range(self.worker.count):
            text = self._fetch(index)
            if text is None:
                continue
            label = str(index)
            try:
                parsed = list(text_string_to_metric_families(text.decode()))  # type: ignore[no-untyped-call]
            except ValueError as error:  # cut short: the sibling stopped while answering
                log.warning(
                    "metrics of a worker unreadable", extra={"peer": index, "error": str(error)}
                )
                continue
            for family in parsed:
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                merged.samples.extend(
                    sample._replace(labels={**sample.labels, "worker": label})
                    for sample in family.samples
                )
        yield from families.values()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.worker.metrics_socket(self.worker.index).unlink(missing_ok=True)


def listen(settings: Settings) -> socket.socket:
    """The listening socket, bound before any worker starts (they share it)."""
    where = f"{settings.host}:{settings.port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise ConfigurationError(
            "BUILD_CONTEXT_HOST",
            f"cannot resolve {settings.host!r} ({error.strerror})",
            "Set it to an address of this host, such as 0.0.0.0 or 127.0.0.1.",
        ) from error
    try:
        sock = socket.create_server(address[:2], family=family, backlog=1024)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigurationError(
            "PORT",
            f"cannot listen on {where} ({reason})",
            "Stop what else listens there, or set PORT (and BUILD_CONTEXT_HOST) to a free address.",
        ) from error
    sock.setblocking(False)
    return sock


WorkerMain = Callable[[Worker, socket.socket, Callable[[], None]], None]
"""Runs one worker until it stopped: builds its app and serves on the socket, calling the
third argument once it accepts requests."""


class Supervisor:
    def __init__(self, settings: Settings, count: int, worker_main: WorkerMain) -> None:
        self.settings = settings
        self.count = count
        self.worker_main = worker_main
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: set[int] = set()
        self.stopping = False
        self.deadline: float | None = None  # when stopping: stuck workers are killed after it
        self.failed = False
        self.restarts: deque[float] = deque()

    def run(self, sock: socket.socket, ready: Callable[[str, int], None] | None = None) -> int:
        host, port = sock.getsockname()[:2]
        folder = Path(tempfile.mkdtemp(prefix="build-context-"))
        ready_read, ready_write = os.pipe()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "supervising",
            extra={"host": host, "port": port, "processes": self.count, "pid": os.getpid()},
        )
        announced = False
        try:
            for index in range(self.count):
                self._spawn(index, sock, folder, ready_write)
            while self.children:
                readable, _, _ = select.select([ready_read], [], [], 0.2)
                if readable:
                    self.started.update(os.read(ready_read, 256))
                    if not announced and len(self.started) == self.count:
                        announced = True
                        log.info("serving", extra={"host": host, "port": port})
                        if ready:
                            ready(str(host), int(port))
                self._reap(sock, folder, ready_write)
                self._kill_stragglers()
        finally:
            sock.close()
            os.close(ready_read)
            os.close(ready_write)
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            folder.rmdir()
        log.info("stopped", extra={"failed": self.failed})
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop()

    def _kill_stragglers(self) -> None:
        """A worker still running well after its grace period ran out is stuck: kill it."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        for pid, index in list(self.children.items()):
            log.error("killing a worker that did not stop", extra={"worker": index, "pid": pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.failed = True
        self.deadline = None

    def _stop(self) -> None:
        if not self.stopping:
            self.deadline = time.monotonic() + self.settings.shutdown_grace_seconds + STOP_MARGIN
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self, sock: socket.socket, folder: Path, ready_write: int) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            index = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                self.failed = self.failed or code != 0
                continue
            log.error("worker exited", extra={"worker": index, "pid": pid, "exitCode": code})
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - RESTART_WINDOW_SECONDS:
                self.restarts.popleft()
            if index not in self.started or len(self.restarts) > RESTARTS_ALLOWED:
                log.error(
                    "stopping: a worker cannot start or keeps dying",
                    extra={"restarts": len(self.restarts), "windowSeconds": RESTART_WINDOW_SECONDS},
                )
                self.failed = True
                self._stop()
                continue
            self._spawn(index, sock, folder, ready_write)

    def _spawn(self, index: int, sock: socket.socket, folder: Path, ready_write: int) -> None:
        worker = Worker(index, self.count, folder, os.getpid())
        # Signals stay blocked across the fork so neither side runs the other's handler:
        # the child installs its own before unblocking, the parent records the child first.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        pid = os.fork()
        if pid == 0:
            _worker_process(worker, sock, ready_write, self.worker_main)
        self.children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if self.stopping:
            os.kill(pid, signal.SIGTERM)


def _worker_process(
    worker: Worker, sock: socket.socket, ready_write: int, worker_main: WorkerMain
) -> None:
    code = 1
    try:
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for handler in logging.getLogger().handlers:
            handler.addFilter(WorkerLogFilter(worker.index))
        # SIGTERM stays blocked (pending) until the server has installed its drain handler.

        def started() -> None:
            os.write(ready_write, bytes([worker.index]))

        worker_main(worker, sock, started)
        code = 0
    except BaseException:
        log.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)
