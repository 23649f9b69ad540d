"""The command line as a user runs it: `python -m function ...` in a child process, with this
checkout importable and the output captured as text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def sweep(cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The summary of `cleanup --ttl-seconds 0` with nothing kept by count or grace, run until
    no store keeps a context as active (or 30 s have passed): records keep whole seconds, and a
    TTL of 0 expires what is older than that, so a run within the second of a create keeps it."""
    deadline = time.monotonic() + 30
    while True:
        done = run_cli(
            "cleanup",
            "--ttl-seconds",
            "0",
            cwd=cwd,
            env={
                **env,
                "BUILD_CONTEXT_KEEP_LATEST": "0",
                "BUILD_CONTEXT_CLEANUP_GRACE_SECONDS": "0",
            },
        )
        assert done.returncode == 0, done.stderr
        summary: dict[str, Any] = json.loads(done.stdout)
        active = any(store["retained"].get("active") for store in summary["stores"])
        if not active or time.monotonic() > deadline:
            return summary
