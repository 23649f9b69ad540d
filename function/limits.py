"""Limits per caller: a cap per function name on live contexts and on their bytes.

A new context of a function is admitted only while that function holds fewer than
`BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION` live (unexpired) contexts and their bytes plus the new
archive stay within `BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION`, counted over every store the
function writes to (the primary and the overflow). The same content again is a reuse and always
admitted: it adds nothing.

Count and create happen under one lock per (namespace, function): a lock file taken with
`flock`, so the threads and the worker processes of one pod (and, for the filesystem store,
every pod sharing its volume) admit one new context of a function at a time. Between pods that
share a ConfigMap namespace or an S3 bucket there is no common lock: each pod may admit one
context beyond what it has seen, so the cap can be overshot by at most (pods - 1) contexts and
(pods - 1) x the largest archive, and only while those pods create for the same function at the
same instant (docs/security.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .archive import Archive
from .contract import utc_text
from .errors import FieldError, QuotaExceeded, StorageUnavailable
from .settings import Settings
from .stores.base import ContextRecord, Store, Stored
from .stores.filesystem import open_lock

Put = Callable[[], "tuple[Stored, bool]"]


@dataclass
class Usage:
    """The live contexts of one function, over every store."""

    count: int = 0
    bytes: int = 0
    hashes: set[str] = field(default_factory=set)
    next_expiry: datetime | None = None

    def add(self, record: ContextRecord) -> None:
        if record.content_hash in self.hashes:
            return  # the same content in the primary and the overflow store counts once
        self.hashes.add(record.content_hash)
        self.count += 1
        self.bytes += record.size_bytes
        if self.next_expiry is None or record.expires_at < self.next_expiry:
            self.next_expiry = record.expires_at


class FunctionLimits:
    def __init__(self, settings: Settings, lock_dir: Path | None = None) -> None:
        self.max_contexts = settings.max_contexts_per_function
        self.max_bytes = settings.max_bytes_per_function
        if lock_dir is None:
            lock_dir = (
                settings.fs_root / ".limits"
                if settings.storage == "filesystem"
                else Path(tempfile.gettempdir()) / "build-context-limits"
            )
        self.lock_dir = lock_dir

    @property
    def enabled(self) -> bool:
        return bool(self.max_contexts or self.max_bytes)

    def stored(self, stores: Iterable[Store[Any]], record: ContextRecord) -> Usage:
        """Everything the function has stored: an upper bound of its live usage."""
        usage = Usage()
        for store in stores:
            for content_hash, size in store.function_sizes(record.namespace, record.function):
                if content_hash not in usage.hashes:
                    usage.hashes.add(content_hash)
                    usage.count += 1
                    usage.bytes += size
        return usage

    def usage(self, stores: Iterable[Store[Any]], record: ContextRecord, now: datetime) -> Usage:
        """The function's live (unexpired) contexts, with the next expiry."""
        usage = Usage()
        for store in stores:
            for found in store.function_contexts(record.namespace, record.function):
                if not found.expired(now):
                    usage.add(found)
        return usage

    def _fits(self, usage: Usage, archive: Archive) -> bool:
        return (not self.max_contexts or usage.count < self.max_contexts) and (
            not self.max_bytes or usage.bytes + archive.size_bytes <= self.max_bytes
        )

    def admit(
        self,
        stores: Iterable[Store[Any]],
        archive: Archive,
        record: ContextRecord,
        now: datetime,
        put: Put,
    ) -> tuple[Stored, bool]:
        """Run `put` (which stores the context) if the function may hold it; else raise
        QuotaExceeded and store nothing."""
        if not self.enabled:
            return put()
        stores = list(stores)
        with self._locked(record.namespace, record.function):
            try:
                # Cheap first: within the caps counting even expired contexts, or the same
                # content again (a reuse, always admitted), needs no per-context read.
                stored = self.stored(stores, record)
                if archive.content_hash not in stored.hashes and not self._fits(stored, archive):
                    self._check(self.usage(stores, record, now), archive, record)
            except OSError as error:
                raise StorageUnavailable(
                    f"cannot count the live contexts of {record.function!r} to apply the "
                    f"per-function limits ({type(error).__name__}); retry later"
                ) from error
            return put()

    def _check(self, usage: Usage, archive: Archive, record: ContextRecord) -> None:
        if archive.content_hash in usage.hashes:
            return
        name = record.function
        wait = (
            f"the next one expires at {utc_text(usage.next_expiry)}"
            if usage.next_expiry
            else "none expires soon"
        )
        if self.max_contexts and usage.count >= self.max_contexts:
            raise _exceeded(
                "contexts",
                f"lambdaFunction {name!r} already has {usage.count} live contexts; the limit "
                f"is {self.max_contexts} per function (BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION). "
                f"Reuse one (the same program gives the same context), wait for one to expire "
                f"({wait}), or ask the operator to raise the limit",
            )
        if self.max_bytes and usage.bytes + archive.size_bytes > self.max_bytes:
            raise _exceeded(
                "bytes",
                f"lambdaFunction {name!r} holds {usage.bytes} bytes of live contexts and this "
                f"one adds {archive.size_bytes}; the limit is {self.max_bytes} bytes per "
                f"function (BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION). Wait for a context to "
                f"expire ({wait}), send less, or ask the operator to raise the limit",
            )

    @contextmanager
    def _locked(self, namespace: str, function: str) -> Iterator[None]:
        # Validated names (DNS labels); hashed anyway so no name can reach outside the folder.
        digest = hashlib.sha256(f"{namespace}/{function}".encode()).hexdigest()[:32]
        try:
            lock = open_lock(os.path.join(self.lock_dir, f"{digest}.lock"))
        except OSError as error:
            raise StorageUnavailable(
                f"cannot take the per-function lock in {self.lock_dir} "
                f"({type(error).__name__}); check the volume and retry"
            ) from error
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing the last descriptor releases the lock


def _exceeded(limit: str, message: str) -> QuotaExceeded:
    error = QuotaExceeded(message, [FieldError(message, field="lambdaFunction")])
    error.limit = limit
    return error
