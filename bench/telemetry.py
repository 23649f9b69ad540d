"""What each OpenTelemetry instrument costs a request: `python -m bench.telemetry [--calls N]`.

The providers are the server's own (function/telemetry/exporters.py: Prometheus, exemplars off,
no trace exporter, so no stage spans); each instrument is called as a small created request calls
it, with the same attributes, and timed alone (median of 7 batches of N calls, CPU time). The
table gives µs per call, calls per request and µs per request; the goal is a total under 100 µs
(issue 24).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from function import outcomes
from function.telemetry import Telemetry
from function.telemetry.exporters import install_exporters

from .load import Table

EVENT = {
    "id": "bench-1",
    "source": "bench",
    "type": "dev.build-context.create",
    "specversion": "1.0",
}
STAGES = ("validate", "render", "archive", "sign", "store")


def per_call(action: Callable[[], object], calls: int) -> float:
    """Median CPU seconds of one call over 7 batches."""
    batches = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(calls):
            action()
        batches.append((time.process_time() - start) / calls)
    return statistics.median(batches)


def instruments(telemetry: Telemetry) -> list[tuple[str, int, Callable[[], object]]]:
    """(what, calls per small created request, one call) for each instrument a request uses."""
    attempt = outcomes.Attempt({"store": "filesystem", "runtime": "python"})
    attributes = {"store": "filesystem", "runtime": "python"}

    def request_span() -> None:
        with telemetry.request(EVENT):
            telemetry.inject({})

    def stage() -> None:
        with telemetry.stage("validate", attributes):
            pass

    return [
        ("request span, its traceparent into the reply", 1, request_span),
        (f"stage duration (one of {', '.join(STAGES)})", len(STAGES), stage),
        ("archive size", 1, lambda: telemetry.archive_size.record(1500, attributes)),
        ("requests + request duration (outcomes.created)", 1, lambda: _created(telemetry, attempt)),
    ]


def _created(telemetry: Telemetry, attempt: outcomes.Attempt) -> None:
    seconds = attempt.seconds()
    attributes = {**attempt.attributes, "runtime": "python"}
    telemetry.requests.add(1, {**attributes, "outcome": "created", "reason": ""})
    telemetry.duration.record(seconds, {**attributes, "outcome": "created"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000, help="calls per batch")
    args = parser.parse_args(argv)
    exporters = install_exporters({})
    telemetry = Telemetry(exporters.meter_provider, exporters.tracer_provider, stage_spans=False)
    table = Table(["instrument", "µs per call", "calls per request", "µs per request"])
    print(table.header())
    total = 0.0
    for what, count, action in instruments(telemetry):
        cost = per_call(action, args.calls) * 1e6
        total += cost * count
        print(table.add(what, f"{cost:.2f}", str(count), f"{cost * count:.1f}"))
    print(table.add("**total**", "", "", f"**{total:.1f}**"))
    exporters.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
