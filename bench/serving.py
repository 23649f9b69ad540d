"""The function server as the bench runs it: its shape, started on a store and warmed up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from function.settings import load_settings
from function.workers import process_count
from tests.support.server import FunctionServer

from . import stores, workload
from .load import send


@dataclass(frozen=True)
class Shape:
    """Server threads and processes; None: the server's default."""

    threads: int | None = None
    processes: int | None = None

    def env(self) -> dict[str, str]:
        env = {}
        if self.threads:
            env["BUILD_CONTEXT_THREADS"] = str(self.threads)
        if self.processes:
            env["BUILD_CONTEXT_PROCESSES"] = str(self.processes)
        return env

    def describe(self) -> str:
        settings = load_settings(**{k: v for k, v in vars(self).items() if v})
        return f"server threads: {settings.server_threads}, processes: {process_count(settings)}"


@contextlib.contextmanager
def running_server(name: str, shape: Shape) -> Iterator[tuple[FunctionServer, dict[str, str]]]:
    with stores.opened(name) as (env, workdir):
        server = FunctionServer({**env, **shape.env()}, workdir).start()
        try:
            warm = send(server.url, workload.mixed(40, seed=seed()), concurrency=10)
            if warm.failures:
                raise SystemExit(f"warm-up failed on {name}: {warm.failures[0]}")
            yield server, env
        finally:
            server.stop()


def requests_of(kind: str, count: int) -> list[workload.Request]:
    if kind == "small":
        salt = seed()
        return [
            workload.request(workload.RUNTIMES[i % 3], "1KB", salt * 1_000_003 + i)
            for i in range(count)
        ]
    return workload.mixed(count, seed=seed())


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.2f} ms"


def seed() -> int:
    return int.from_bytes(os.urandom(4), "big")
