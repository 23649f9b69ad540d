"""The command line as a user runs it: `python -m function ...` in a child process, with this
checkout importable and the output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.contexts import ROOT


def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`python -m function *args` in `cwd`, with `env` over this process's environment; the
    exit code is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "function", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
