"""Credential scan on 900 KB of source: `python -m bench.credentials`.

Prints the scan time of `function.credentials` per runtime (median of repeated runs) next to
the archive + hash stage on the same files, and, when detect-secrets is installed
(`pip install detect-secrets==1.5.0`, not a dependency of the function), that library's
line-based scan of the same text, for the ratio that decided against it.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable

from function import archive as archives
from function import credentials

from . import workload


def _median_ms(action: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _detect_secrets(text: str) -> Callable[[], object] | None:
    try:
        from detect_secrets.core.scan import (  # type: ignore[import-not-found]
            _process_line_based_plugins,
        )
        from detect_secrets.settings import default_settings  # type: ignore[import-not-found]
    except ImportError:
        return None
    lines = list(enumerate(text.splitlines(), 1))

    def run() -> object:
        with default_settings():
            return list(_process_line_based_plugins(lines=lines, filename="remediation.py"))

    return run


def main() -> int:
    print(
        "| runtime | source | credential scan (ms) | archive + hash (ms) | detect-secrets 1.5.0 (ms) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for runtime in workload.RUNTIMES:
        text = workload.source(runtime, workload.SIZES["900KB"], salt=7)
        files = {"remediation": text}
        scan = _median_ms(functools.partial(credentials.scan, files), 15)
        pack = _median_ms(functools.partial(archives.build, files), 15)
        other = _detect_secrets(text)
        theirs = f"{_median_ms(other, 1):.0f}" if other else "not installed"
        print(f"| {runtime} | {len(text) // 1024} KB | {scan:.1f} | {pack:.1f} | {theirs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
