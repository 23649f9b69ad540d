"""The function against two floors (bench/floor.py), in alternating rounds: `--only ratios`.

The first floor packs and writes durably and checks nothing (one process of 8 threads, as
measured since issue 16). The second also runs the function's exact syntax check of every source,
in the function's own shape (processes x threads): the least a server that keeps our promises
does. Each scenario runs on the three servers back to back, the order turning every round, so a
noisy neighbour hits them alike. Medians over rounds; the cost ratio is function/floor for
latency and CPU, floor/function for throughput, so for every row lower is better.
"""

from __future__ import annotations

import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from function.settings import load_settings
from function.workers import process_count

from . import floor as floor_server
from . import workload
from .load import MemoryWatch, Run, Table, percentiles, send
from .serving import Shape, ms, requests_of, running_server, seed

FLOORS = ("floor", "checking floor")


@dataclass(frozen=True)
class Measure:
    """One row of the ratio table: what is read from a run."""

    label: str
    read: Callable[[Run, float], float]
    """From the run and the server's CPU seconds per request."""
    latency: bool
    """True: lower is better (ratio function/floor); False: a rate (ratio floor/function)."""


def _p50(run: Run, cpu: float) -> float:
    return percentiles(run.latencies)[0]


def _p95(run: Run, cpu: float) -> float:
    return percentiles(run.latencies)[1]


def _rate(run: Run, cpu: float) -> float:
    return run.throughput


def _cpu(run: Run, cpu: float) -> float:
    return cpu


Scenario = tuple[str, int, int, list[Measure]]
"""Which requests (`requests_of` kind), how many, how many in flight, and what is read."""


def _at_once(kind: str, sizes: str, short: str = "") -> Scenario:
    """150 requests in flight at once: p95 latency, throughput and server CPU per request
    (its label names the sizes as `short`, where given)."""
    return (
        kind,
        150,
        150,
        [
            Measure(f"150 at once, {sizes}: p95", _p95, True),
            Measure(f"150 at once, {sizes}: req/s", _rate, False),
            Measure(f"150 at once, {short or sizes}: server CPU per request", _cpu, True),
        ],
    )


def ratio_section(shape: Shape, rounds: int | None, quick: bool) -> None:
    rounds = rounds or (1 if quick else 7)
    scenarios: list[Scenario] = [
        ("small", 20 if quick else 60, 1, [Measure("one at a time, 1 KB: p50", _p50, True)]),
        _at_once("small", "1 KB"),
        _at_once("mixed", "mixed 1 KB-900 KB", short="mixed"),
    ]
    settings = load_settings(**{k: v for k, v in vars(shape).items() if v})
    processes, threads = process_count(settings), settings.server_threads
    print(
        f"\n## Against the floors (filesystem store under {tempfile.gettempdir()}; function: "
        f"{shape.describe()}; floor: one Flask process under waitress, 8 threads; checking "
        f"floor: the same plus the exact syntax checks, {processes} processes x {threads} "
        f"threads; median of {rounds} rounds, the order turning)\n"
    )
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with (
        running_server("filesystem", shape) as (server, _),
        floor_server.running(server.workdir) as (floor_url, floor_pid),
        floor_server.running(server.workdir, threads=threads, check=True, processes=processes) as (
            checking_url,
            checking_pid,
        ),
    ):
        assert server.process is not None
        servers = [
            ("function", server.url, server.process.pid),
            ("floor", floor_url, floor_pid),
            ("checking floor", checking_url, checking_pid),
        ]
        for _, url, _ in servers[1:]:
            warm = send(url, workload.mixed(40, seed=seed()), concurrency=10)
            if warm.failures:
                raise SystemExit(f"floor warm-up failed: {warm.failures[0]}")
        for index in range(rounds):
            order = servers[index % 3 :] + servers[: index % 3]
            for kind, count, concurrency, measures in scenarios:
                requests = requests_of(kind, count)
                for who, url, pid in order:
                    with MemoryWatch(pid) as watch:
                        run = send(url, requests, concurrency)
                    if run.failures:
                        raise SystemExit(f"{who} failed: {run.failures[0]}")
                    cpu = watch.cpu_seconds / len(run.replies)
                    for measure in measures:
                        values[measure.label][who].append(measure.read(run, cpu))
    _print(scenarios, values)


def _print(scenarios: list[Scenario], values: dict[str, dict[str, list[float]]]) -> None:
    table = Table(
        [
            "measure",
            "function",
            *FLOORS,
            *(f"ratio to {name}" for name in FLOORS),
            "per round, to the checking floor",
        ]
    )
    print(table.header())
    for _, _, _, measures in scenarios:
        for measure in measures:
            ours = values[measure.label]["function"]
            mine = statistics.median(ours)
            show = ms if measure.latency else (lambda v: f"{v:,.0f}")
            medians, ratios = [], []
            for name in FLOORS:
                theirs = statistics.median(values[measure.label][name])
                medians.append(show(theirs))
                ratios.append(f"**{_ratio(mine, theirs, measure.latency):.2f}x**")
            per_round = [
                _ratio(a, b, measure.latency)
                for a, b in zip(ours, values[measure.label][FLOORS[1]], strict=True)
            ]
            span = f"{min(per_round):.2f}-{max(per_round):.2f}x"
            print(table.add(measure.label, show(mine), *medians, *ratios, span))


def _ratio(ours: float, theirs: float, latency: bool) -> float:
    return ours / theirs if latency else theirs / ours
