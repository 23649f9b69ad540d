"""What a new context costs the filesystem store in system calls, counted by a spy on `os` (and
the `open` builtin): an upper bound per kind, so a change that brings back a rescan of the
function's contexts, an extra file or an extra directory fsync fails here.

The counts are per new context through the per-function caps and the store, in steady state: the
function already holds contexts, the process has stored before (docs/performance.md has the
counts before and after issue 24)."""

from __future__ import annotations

import builtins
import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from function import archive
from function.limits import FunctionLimits
from function.settings import load_settings
from function.stores.filesystem import FilesystemStore
from tests.support.records import NOW, record

HELD = 30
"""Contexts the function holds before the counted ones: a rescan would cost one `stat` each."""
COUNTED = 10
SPIED = ("open", "fsync", "mkdir", "stat", "lstat", "rename", "replace", "scandir", "listdir")

# At most, per new context: the caps' lock file and the store's per-function state are kept
# open, so what is opened is the three files and the temporary folder (for its fsync); the
# files, the temporary folder and the function folder are fsynced; one mkdir, one rename.
BOUNDS = {"open": 5, "fsync": 5, "mkdir": 1, "stat": 0, "rename": 1, "scandir": 0}
MANY = 200
"""Functions written in turn, more than a process keeps open (64): each new context then also
opens its function's folder and lock file, as before issue 24, but still rescans nothing."""


def built(index: int) -> archive.Archive:
    made = archive.build({"remediation.py": f"print({index})\n", "Dockerfile": "FROM x\n"})
    return dataclasses.replace(made, provenance=b'{"payload": ""}')


def spy(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the calls of SPIED (os.lstat, os.listdir under their own names); `open` counts
    both `os.open` and the builtin."""
    calls: Counter[str] = Counter()

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    for name in SPIED:
        monkeypatch.setattr(os, name, counted(name, getattr(os, name)))
    monkeypatch.setattr(builtins, "open", counted("open", builtins.open))
    return calls


@pytest.mark.parametrize("functions", [1, MANY])
def test_a_new_context_costs_a_bounded_number_of_system_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, functions: int
) -> None:
    store = FilesystemStore(tmp_path / "store")
    limits = FunctionLimits(
        load_settings(max_contexts_per_function=HELD + COUNTED + 5), tmp_path / "limits"
    )
    archives = [built(i) for i in range((HELD + COUNTED) * functions)]

    def create(index: int) -> None:
        made = archives[index]
        context = record(made, NOW, timedelta(hours=1), function=f"fix-{index % functions}")
        limits.admit(
            [store], made, context, NOW, lambda: (store.put_if_absent(made, context), False)
        )

    for index in range(HELD * functions):
        create(index)
    calls = spy(monkeypatch)
    for index in range(HELD * functions, (HELD + COUNTED) * functions):
        create(index)
    monkeypatch.undo()
    store.close()
    per_context = {name: calls[name] / (COUNTED * functions) for name in SPIED}
    print(f"system calls per new context ({functions} functions):", per_context)
    bounds = {**BOUNDS, "open": BOUNDS["open"] + (2 if functions > 64 else 0)}
    over = {k: v for k, v in per_context.items() if v > bounds.get(k, 0)}
    assert not over, f"more than {bounds} per new context: {per_context}"
