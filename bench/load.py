"""Concurrent CloudEvents over real HTTP, and the server's memory while they run.

One asyncio loop with aiohttp drives every connection, so the client costs little CPU on the
same two cores as the server; bodies and headers are encoded before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from .workload import Request

REQUESTED = "remediation.buildcontext.requested"


@dataclass(frozen=True)
class Reply:
    request: Request
    status: int
    type: str | None
    data: Any
    seconds: float


@dataclass
class Run:
    replies: list[Reply]
    wall_seconds: float
    concurrency: int

    @property
    def latencies(self) -> list[float]:
        return [r.seconds for r in self.replies]

    def latencies_of(self, size: str) -> list[float]:
        """Latencies of the requests of one source size: do small ones wait behind large?"""
        return [r.seconds for r in self.replies if r.request.size == size] or [0.0]

    @property
    def throughput(self) -> float:
        return len(self.replies) / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def failures(self) -> list[Reply]:
        return [r for r in self.replies if r.status != 200 or r.type != "buildcontext.created"]


def _encoded(request: Request) -> tuple[dict[str, str], bytes]:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": REQUESTED,
        "ce-source": "/bench/load",
        "ce-id": str(uuid.uuid4()),
        "content-type": "application/json",
    }
    return headers, json.dumps(request.data).encode()


async def _drive(
    url: str, requests: Sequence[Request], concurrency: int, timeout: float
) -> tuple[list[Reply], float]:
    encoded = [(r, *_encoded(r)) for r in requests]
    queue: asyncio.Queue[tuple[Request, dict[str, str], bytes]] = asyncio.Queue()
    for item in encoded:
        queue.put_nowait(item)
    replies: list[Reply] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start_line = asyncio.Event()

        async def worker() -> None:
            await start_line.wait()
            while not queue.empty():
                request, headers, body = queue.get_nowait()
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    payload = await response.read()
                seconds = time.perf_counter() - start
                try:
                    data = json.loads(payload)
                except ValueError:
                    data = payload.decode(errors="replace")
                replies.append(
                    Reply(request, response.status, response.headers.get("ce-type"), data, seconds)
                )

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(0)
        wall = time.perf_counter()
        start_line.set()
        await asyncio.gather(*workers)
        wall = time.perf_counter() - wall
    return replies, wall


def send(url: str, requests: Sequence[Request], concurrency: int, timeout: float = 120) -> Run:
    """Send every request with `concurrency` in flight at once (a closed loop: each of the
    `concurrency` senders sends its next request when its reply arrived)."""
    replies, wall = asyncio.run(_drive(url, requests, concurrency, timeout))
    return Run(replies, wall, concurrency)


class MemoryWatch:
    """Samples the resident memory of a process and its children (the server's workers) every
    few milliseconds and keeps the peak; also counts the CPU seconds (user + system) they used,
    which a noisy neighbour does not inflate the way it inflates latency."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.process = psutil.Process(pid)
        self._tree: list[psutil.Process] | None = None
        self.interval = interval
        self.peak = 0
        self.cpu_seconds = 0.0
        self._cpu_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-watch", daemon=True)

    def tree(self) -> list[psutil.Process]:
        """The server and its worker processes (BUILD_CONTEXT_PROCESSES above 1)."""
        if self._tree is None:
            self._tree = [self.process, *self.process.children(recursive=True)]
        return self._tree

    def rss(self) -> int:
        return sum(int(p.memory_info().rss) for p in self.tree())

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def _cpu(self) -> float:
        return sum(float(t.user + t.system) for t in (p.cpu_times() for p in self.tree()))

    def __enter__(self) -> MemoryWatch:
        self.peak = self.rss()
        self._cpu_start = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.cpu_seconds = self._cpu() - self._cpu_start


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 (inclusive method: exact on small samples, no extrapolation)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


@dataclass
class Table:
    """A Markdown table, printed as it fills so a long run shows progress."""

    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)

    def header(self) -> str:
        return (
            "| "
            + " | ".join(self.headers)
            + " |\n|"
            + "|".join("---" if i == 0 else "--:" for i in range(len(self.headers)))
            + "|"
        )

    def add(self, *cells: object) -> str:
        row = [str(c) for c in cells]
        self.rows.append(row)
        return "| " + " | ".join(row) + " |"
