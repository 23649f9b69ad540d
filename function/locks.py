"""Lock files taken with `flock`: one holder at a time among the threads and processes of a pod,
and among the pods that share the lock's folder (a volume). The per-function limits lock each
function's count with one; the filesystem store keeps its per-function lock files open instead
(stores/filesystem_index.py), since it also logs each function's changes in them."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


def open_lock(path: str) -> int:
    """A lock file's descriptor, to `held`; its folder is made on first use only (one system
    call per request instead of a mkdir that fails with EEXIST, then the open)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o666)


@contextmanager
def held(lock: int) -> Iterator[None]:
    """The lock file `lock` (from open_lock) held exclusively; closed after, which releases it."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing the last descriptor releases the lock
