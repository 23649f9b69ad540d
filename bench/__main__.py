"""Where the time goes: `python -m bench [--stores filesystem,s3,configmap] [--quick]`.

Prints Markdown tables (docs/performance.md has the numbers of a full run):
archive + hash against two baselines, per-stage percentiles in-process, end-to-end latency and
throughput over real HTTP at several concurrencies, the server's peak memory, and optionally
a sweep of worker-thread counts and a py-spy profile of the server under the largest run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace

from function import archive as archives
from function.create import CreateService
from function.settings import load_settings
from function.stores import open_store
from function.telemetry import Telemetry
from function.validation import parse, validate

from . import stores, workload
from .load import MemoryWatch, Run, Table, percentiles, send
from .ratios import ratio_section
from .serving import Shape, ms, requests_of, running_server, seed

MIB = 1024 * 1024
STAGES = ("validate", "render", "archive", "store")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--stores",
        default="filesystem",
        help=f"comma-separated, of: {', '.join(stores.available())} (default: filesystem)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument(
        "--concurrency",
        default="1,10,50,150",
        help="end-to-end concurrencies (default 1,10,50,150)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="server worker threads for the end-to-end runs (default: the server's default)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="server processes for the end-to-end runs (default: the server's default, one per "
        "CPU)",
    )
    parser.add_argument(
        "--process-sweep",
        default="",
        help="also compare these server process counts at the highest concurrency, e.g. 1,2",
    )
    parser.add_argument(
        "--thread-sweep",
        default="",
        help="also compare these server thread counts at the highest concurrency, e.g. 2,4,8,16",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of a sweep (medians are shown)"
    )
    parser.add_argument(
        "--workload",
        choices=["mixed", "small"],
        default="mixed",
        help="end-to-end requests: sizes mixed as in bench/workload.py MIX, or all 1 KB",
    )
    parser.add_argument(
        "--only",
        default="ratios,archive,stages,http",
        help="sections to run, of ratios,archive,stages,http (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating rounds of the function against the floor (default 7; --quick: 1)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy (GIL holder) during the largest run of the first "
        "store; write the collapsed stacks here and print the hottest frames",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.stores.split(",") if n.strip()]
    unknown = [n for n in names if n not in stores.BACKENDS]
    if unknown:
        parser.error(f"unknown store {unknown[0]!r}; choose from {', '.join(stores.available())}")
    sections = set(args.only.split(","))
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    print(machine())
    if "ratios" in sections:
        ratio_section(Shape(args.threads, args.processes), args.rounds, args.quick)
    if "archive" in sections:
        archive_section(args.quick)
    if "stages" in sections:
        stage_section(names, args.quick)
    if "http" in sections:
        shape = Shape(args.threads, args.processes)
        http_section(names, concurrencies, shape, args.workload, args.quick, args.profile)
    for option, values in (("threads", args.thread_sweep), ("processes", args.process_sweep)):
        if values:
            sweep = [
                Shape(**{"threads": args.threads, "processes": args.processes, option: int(v)})
                for v in values.split(",")
            ]
            sweep_section(
                names[0], option, sweep, max(concurrencies), args.workload, args.quick, args.repeat
            )
    return 0


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# build-context benchmark\n\n{cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average {load} at start\n"
    )


def timed(fn: Callable[[], object], budget: float, minimum: int = 5) -> float:
    """Median seconds of one call, over as many calls as fit in `budget` (at least `minimum`)."""
    fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < minimum or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2]


def naive_build(files: Mapping[str, str]) -> str:
    """What a first version would do: tarfile's own gzip (level 9), then sha256 of the result."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(files):
            data = files[name].encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = archives.MTIME
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def floor(raw: bytes) -> str:
    """The least any tar.gz + hash can cost: compress and hash the same bytes once."""
    zlib.compress(raw, archives.COMPRESSION_LEVEL)
    return hashlib.sha256(raw).hexdigest()


def context_files(request: workload.Request) -> dict[str, str]:
    settings = load_settings()
    valid = validate(parse(request.data), settings)
    rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, settings)
    return {**valid.sources, **rendered.files()}


def archive_section(quick: bool) -> None:
    budget = 0.05 if quick else 0.5
    table = Table(
        [
            "source",
            "context bytes",
            "archive + hash",
            "naive tarfile+gzip+sha256",
            "floor zlib+sha256",
            "vs naive",
            "vs floor",
            "MB/s",
        ]
    )
    print("\n## Archive + hash per context (median, one thread)\n")
    print(table.header())
    for size in workload.SIZES:
        files = context_files(workload.request("python", size, salt=7))
        raw = b"".join(files[name].encode() for name in sorted(files))
        ours = timed(lambda files=files: archives.build(files), budget)  # type: ignore[misc]
        naive = timed(lambda files=files: naive_build(files), budget)  # type: ignore[misc]
        least = timed(lambda raw=raw: floor(raw), budget)  # type: ignore[misc]
        print(
            table.add(
                size,
                len(raw),
                _duration(ours),
                _duration(naive),
                _duration(least),
                f"{naive / ours:.1f}x faster",
                f"{ours / least:.2f}x",
                f"{len(raw) / ours / 1e6:.0f}",
            )
        )


class StageClock(Telemetry):
    """Telemetry that keeps every stage's duration, so the bench can take percentiles."""

    def __init__(self) -> None:
        super().__init__(metrics.NoOpMeterProvider(), trace.NoOpTracerProvider())
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def stage(self, name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
        start = time.perf_counter()
        try:
            yield trace.INVALID_SPAN
        finally:
            self.samples[name].append(time.perf_counter() - start)


def stage_section(names: Sequence[str], quick: bool) -> None:
    count = 60 if quick else 400
    print(
        f"\n## Per stage, in-process (ms; {count} distinct requests, sizes mixed as "
        f"{_mix()}, one at a time)\n"
    )
    table = Table(["store", "stage", "p50", "p95", "p99", "p50 1KB", "p50 900KB"])
    print(table.header())
    for name in names:
        with stores.opened(name) as (env, _), stores.environment(env):
            settings = load_settings()
            clock = StageClock()
            store = open_store(settings.storage, settings, clock)
            service = CreateService(settings, store, telemetry=clock)
            sizes: dict[str, list[float]] = defaultdict(list)
            totals: list[float] = []
            for request in workload.mixed(count, seed=seed()):
                marks = {s: len(clock.samples[s]) for s in STAGES}
                start = time.perf_counter()
                service.run(request.data, str(uuid.uuid4()))
                totals.append(time.perf_counter() - start)
                for stage in STAGES:
                    sizes[f"{stage}/{request.size}"] += clock.samples[stage][marks[stage] :]
                sizes[f"total/{request.size}"].append(totals[-1])
            store.close()
            for stage, samples in [*((s, clock.samples[s]) for s in STAGES), ("total", totals)]:
                p50, p95, p99 = percentiles(samples)
                small = sizes.get(f"{stage}/1KB") or [0.0]
                large = sizes.get(f"{stage}/900KB") or [0.0]
                print(
                    table.add(
                        name,
                        stage,
                        ms(p50),
                        ms(p95),
                        ms(p99),
                        ms(percentiles(small)[0]),
                        ms(percentiles(large)[0]),
                    )
                )


def _count(concurrency: int, quick: bool) -> int:
    return max(concurrency, 20) if quick else max(100, 3 * concurrency)


def http_section(
    names: Sequence[str],
    concurrencies: Sequence[int],
    shape: Shape,
    kind: str,
    quick: bool,
    profile: Path | None,
) -> None:
    print(
        f"\n## End to end over HTTP ({kind} workload; "
        f"{shape.describe()}; closed loop: each of the "
        "N senders sends again when answered; 'one burst': N requests sent at once, once)\n"
    )
    table = Table(["store", *RUN_COLUMNS])
    print(table.header())
    for name in names:
        with running_server(name, shape) as (server, _):
            assert server.process is not None
            for concurrency in concurrencies:
                requests = requests_of(kind, _count(concurrency, quick))
                spy = (
                    _py_spy(server.process.pid, profile)
                    if profile and name == names[0] and concurrency == max(concurrencies)
                    else contextlib.nullcontext()
                )
                with MemoryWatch(server.process.pid) as memory, spy:
                    run = send(server.url, requests, concurrency)
                print(table.add(name, *_run_cells(run, memory)))
            burst = max(concurrencies)
            with MemoryWatch(server.process.pid) as memory:
                run = send(server.url, requests_of(kind, burst), burst)
            cells = _run_cells(run, memory)
            cells[0] = f"{burst}, one burst"
            print(table.add(name, *cells))
    if profile and profile.exists():
        print_profile(profile)


def sweep_section(
    name: str,
    option: str,
    sweep: Sequence[Shape],
    concurrency: int,
    kind: str,
    quick: bool,
    repeat: int,
) -> None:
    """Server thread or process counts in turn, `repeat` rounds, medians: a neighbour's burst
    then hits every count alike instead of whichever ran at that moment."""
    print(
        f"\n## Server {option} at concurrency {concurrency} ({name} store, {kind}; "
        f"median of {repeat} interleaved rounds)\n"
    )
    table = Table([option, *RUN_COLUMNS])
    print(table.header())
    rounds: dict[Shape, list[list[float]]] = defaultdict(list)
    for _ in range(repeat):
        for shape in sweep:
            with running_server(name, shape) as (server, _):
                assert server.process is not None
                requests = requests_of(kind, _count(concurrency, quick))
                with MemoryWatch(server.process.pid) as memory:
                    run = send(server.url, requests, concurrency)
                p50, p95, p99 = percentiles(run.latencies)
                rounds[shape].append(
                    [
                        len(run.replies),
                        p50,
                        p95,
                        p99,
                        max(run.latencies),
                        percentiles(run.latencies_of("1KB"))[1],
                        run.throughput,
                        len(run.failures),
                        memory.cpu_seconds / len(run.replies),
                        memory.peak,
                    ]
                )
    for shape in sweep:
        cells = [statistics.median(column) for column in zip(*rounds[shape], strict=True)]
        count, p50, p95, p99, most, small, throughput, failed, cpu, _ = cells
        peak = max(r[-1] for r in rounds[shape])
        print(
            table.add(
                getattr(shape, option),
                concurrency,
                int(count),
                ms(p50),
                ms(p95),
                ms(p99),
                ms(most),
                ms(small),
                f"{throughput:.0f}",
                int(failed),
                ms(cpu),
                f"{peak / MIB:.0f} MiB",
            )
        )


RUN_COLUMNS = [
    "concurrency",
    "requests",
    "p50",
    "p95",
    "p99",
    "max",
    "p95 of 1KB",
    "req/s",
    "failed",
    "server CPU/req",
    "peak RSS",
]


def _run_cells(run: Run, memory: MemoryWatch) -> list[str]:
    p50, p95, p99 = percentiles(run.latencies)
    return [
        str(run.concurrency),
        str(len(run.replies)),
        ms(p50),
        ms(p95),
        ms(p99),
        ms(max(run.latencies)),
        ms(percentiles(run.latencies_of("1KB"))[1]),
        f"{run.throughput:.0f}",
        str(len(run.failures)),
        ms(memory.cpu_seconds / len(run.replies)),
        f"{memory.peak / MIB:.0f} MiB",
    ]


@contextlib.contextmanager
def _py_spy(pid: int, output: Path) -> Iterator[None]:
    """py-spy on the server for the duration of the block, sampling the thread that holds the
    GIL: in one Python process that is the serial part, the work the second core cannot share."""
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--gil",
            "--subprocesses",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        _, errors = spy.communicate(timeout=60)
        if spy.returncode not in (0, -signal.SIGINT) and not output.exists():
            print(f"py-spy failed: {errors.decode(errors='replace')}", file=sys.stderr)


def print_profile(path: Path, top: int = 25) -> None:
    """Hottest frames of a py-spy raw profile: inclusive (in the stack) and self (on top)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[_frame(frame)] += samples
        own[_frame(frames[-1])] += samples
    if not total:
        print("\n(no profile samples)")
        return
    print(f"\n## py-spy profile of the server: GIL holder ({total} samples, {path})\n")
    table = Table(["frame", "inclusive", "self"])
    print(table.header())
    for frame, samples in inclusive.most_common(top):
        print(table.add(frame, f"{100 * samples / total:.1f}%", f"{100 * own[frame] / total:.1f}%"))
    print("\nTop self time:\n")
    for frame, samples in own.most_common(12):
        print(f"- {frame}: {100 * samples / total:.1f}%")


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    file = where.rsplit(":", 1)[0]
    return f"{name} ({file})"


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


def _mix() -> str:
    return ", ".join(f"{size} {weight}%" for size, weight in workload.MIX)


if __name__ == "__main__":
    raise SystemExit(main())
