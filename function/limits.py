"""Limits per caller: a cap per function name on live contexts and on their bytes.

The one invariant: a function never holds more than `BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION`
live (unexpired) contexts, nor more than `BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION` bytes of them,
counted over every store the function writes to (the primary and the overflow). Every path that
makes a context live passes here first: a new context, and the same content again. A reuse of a
context that is still live is admitted (it adds nothing, it only pushes the expiry forward); the
same content after its context expired, stored or not yet deleted, is a new live context and
meets the caps like any other.

Count and create happen under one lock per (namespace, function): a lock file taken with
`flock` (locks.py), so the threads and the worker processes of one pod (and, in a store's shared
folder, `Store.lock_folder`, every pod sharing it: the filesystem store's volume) admit one new
context of a function at a time. Between pods that
share a ConfigMap namespace, an S3 bucket or an OCI repository there is no common lock: each pod
may admit one context beyond what it has seen, so the cap can be overshot by at most (pods - 1)
contexts and (pods - 1) x the largest archive, and only while those pods create for the same
function at the same instant (docs/security.md).
"""

from __future__ import annotations

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
from .locks import held, open_lock
from .settings import Settings
from .stores.base import ContextRecord, Store, Stored

Put = Callable[[], "tuple[Stored, bool]"]


@dataclass
class Usage:
    """Contexts of one function over every store, each content once (the same content in the
    primary and the overflow store counts once), with the earliest expiry among them."""

    sizes: dict[str, int] = field(default_factory=dict)
    next_expiry: datetime | None = None

    @property
    def count(self) -> int:
        return len(self.sizes)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def add(self, content_hash: str, size: int, expires_at: datetime | None = None) -> None:
        if content_hash in self.sizes:
            return
        self.sizes[content_hash] = size
        if expires_at is not None and (self.next_expiry is None or expires_at < self.next_expiry):
            self.next_expiry = expires_at

    def without(self, content_hash: str) -> Usage:
        return Usage({h: n for h, n in self.sizes.items() if h != content_hash}, self.next_expiry)


class FunctionLimits:
    def __init__(self, settings: Settings, lock_dir: Path | None = None) -> None:
        """`lock_dir`: the store's `lock_folder`, else a temporary folder of this pod's."""
        self.max_contexts = settings.max_contexts_per_function
        self.max_bytes = settings.max_bytes_per_function
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "build-context-limits"

    @property
    def enabled(self) -> bool:
        return bool(self.max_contexts or self.max_bytes)

    def stored(self, stores: Iterable[Store[Any]], record: ContextRecord) -> Usage:
        """Everything the function has stored, expired or not: an upper bound of its live
        usage, from what each store tells without reading records."""
        usage = Usage()
        for store in stores:
            for content_hash, size in store.function_sizes(record.namespace, record.function):
                usage.add(content_hash, size)
        return usage

    def usage(self, stores: Iterable[Store[Any]], record: ContextRecord, now: datetime) -> Usage:
        """The function's live (unexpired) contexts, with the next expiry."""
        usage = Usage()
        for store in stores:
            for found in store.function_contexts(record.namespace, record.function):
                if not found.expired(now):
                    usage.add(found.content_hash, found.size_bytes, found.expires_at)
        return usage

    def _fits(self, usage: Usage, archive: Archive) -> bool:
        """Whether `usage` plus this archive as one more live context stays within the caps."""
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
        """Run `put` (which stores the context, or refreshes the stored one) if the function
        may hold it live; else raise QuotaExceeded and store nothing."""
        if not self.enabled:
            return put()
        stores = list(stores)
        with self._locked(record.namespace, record.function):
            try:
                # Cheap first: everything else stored (even expired) plus this one within the
                # caps needs no per-context read; then the live ones alone, from the records.
                stored = self.stored(stores, record)
                if not self._fits(stored.without(archive.content_hash), archive):
                    expired = archive.content_hash in stored.sizes
                    self._check(self.usage(stores, record, now), archive, record, expired)
            except OSError as error:
                raise StorageUnavailable(
                    f"cannot count the live contexts of {record.function!r} to apply the "
                    f"per-function limits ({type(error).__name__}); retry later"
                ) from error
            return put()

    def _check(self, usage: Usage, archive: Archive, record: ContextRecord, stored: bool) -> None:
        """Admit a reuse of a live context (it adds none); else this content is one live
        context more, an expired one brought back (`stored`) as much as a new one."""
        if archive.content_hash in usage.sizes or self._fits(usage, archive):
            return
        name = record.function
        this = (
            "this program's context has expired, and storing it again makes it live again"
            if stored
            else "this program is a new context"
        )
        wait = (
            f"the next one expires at {utc_text(usage.next_expiry)}"
            if usage.next_expiry
            else "none expires soon"
        )
        if self.max_contexts and usage.count >= self.max_contexts:
            raise _exceeded(
                "contexts",
                f"lambdaFunction {name!r} already has {usage.count} live contexts and {this}; "
                f"the limit is {self.max_contexts} per function "
                f"(BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION). Reuse a live one (the same program "
                f"gives the same context), wait for one to expire ({wait}), or ask the operator "
                "to raise the limit",
            )
        raise _exceeded(
            "bytes",
            f"lambdaFunction {name!r} holds {usage.bytes} bytes of live contexts and {this} of "
            f"{archive.size_bytes} bytes; the limit is {self.max_bytes} bytes per function "
            f"(BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION). Wait for a context to expire ({wait}), "
            "send less, or ask the operator to raise the limit",
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
        with held(lock):
            yield


def _exceeded(limit: str, message: str) -> QuotaExceeded:
    error = QuotaExceeded(message, [FieldError(message, field="lambdaFunction")])
    error.limit = limit
    return error
