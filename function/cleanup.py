"""The cleanup use-case: delete what has expired in every store, and nothing a rule keeps.

Two passes per store keep memory flat: the first remembers only the newest `keep_latest`
contexts of each function, the second deletes what has expired and no rule keeps. Every delete
goes through the store's re-check of the freshest record, so a context that a request reused
(or a user pinned) while the run was going stays.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .contract import CleanupCompleted, CleanupRequest, StoreCleanupSummary
from .settings import Settings
from .stores.base import Clock, ContextRecord, Deletion, Listed, Store, utcnow
from .telemetry import NOOP, Telemetry

log = logging.getLogger("build_context.cleanup")

ContextKey = tuple[str, str, str]
"""(namespace, function, contentHash): one context, whatever the store."""

ACTIVE, PINNED, KEEP_LATEST, GRACE, REFRESHED = (
    "active",
    "pinned",
    "keepLatest",
    "grace",
    "refreshed",
)


def context_key(record: ContextRecord) -> ContextKey:
    return (record.namespace, record.function, record.content_hash)


@dataclass(frozen=True)
class Policy:
    """The rules of one run, fixed at its start so every store is judged at the same instant."""

    now: datetime
    grace: timedelta
    stricter_ttl: timedelta | None
    dry_run: bool

    def keeps(self, record: ContextRecord, newest: frozenset[ContextKey]) -> str | None:
        """The first rule that keeps the context, or None when it may go."""
        if not record.expired(self.now, self.stricter_ttl):
            return ACTIVE
        if record.retain:
            return PINNED
        if context_key(record) in newest:
            return KEEP_LATEST
        if self.now - record.created_at < self.grace:
            return GRACE
        return None

    def still_deletable(
        self, current: ContextRecord, listed: ContextRecord, newest: frozenset[ContextKey]
    ) -> bool:
        """True only for the very record we listed, not refreshed, and still kept by no rule."""
        return (
            current.created_at == listed.created_at
            and current.expires_at <= listed.expires_at
            and self.keeps(current, newest) is None
        )


@dataclass
class _Tally:
    store: str
    scanned: int = 0
    expired: int = 0
    deleted: int = 0
    retained: Counter[str] = field(default_factory=Counter)
    gone: int = 0
    errors: int = 0
    leftovers: int = 0

    def summary(self, duration: float) -> StoreCleanupSummary:
        return StoreCleanupSummary(
            store=self.store,
            scanned=self.scanned,
            expired=self.expired,
            deleted=self.deleted,
            retained=dict(sorted(self.retained.items())),
            gone=self.gone,
            errors=self.errors,
            leftovers=self.leftovers,
            duration_seconds=round(duration, 6),
        )


class CleanupService:
    def __init__(
        self,
        stores: Sequence[Store[Any]],
        settings: Settings,
        clock: Clock = utcnow,
        telemetry: Telemetry = NOOP,
    ) -> None:
        self.stores = list(stores)
        self.settings = settings
        self.clock = clock
        self.telemetry = telemetry
        self.namespaces = settings.namespaces

    def run(
        self, request: CleanupRequest | None = None, dry_run: bool = False, request_id: str = ""
    ) -> CleanupCompleted:
        """One pass over every store; a failure is counted in its store's summary, never raised."""
        request = request or CleanupRequest()
        policy = Policy(
            now=self.clock(),
            grace=timedelta(seconds=self.settings.cleanup_grace_seconds),
            stricter_ttl=None
            if request.ttl_seconds is None
            else timedelta(seconds=request.ttl_seconds),
            dry_run=dry_run or bool(request.dry_run),
        )
        start = time.perf_counter()
        with self.telemetry.tracer.start_as_current_span("build_context.cleanup") as span:
            span.set_attribute("build_context.dry_run", policy.dry_run)
            summaries = [self._clean(store, policy) for store in self.stores]
        completed = CleanupCompleted(
            dry_run=policy.dry_run,
            ttl_seconds=request.ttl_seconds,
            keep_latest=self.settings.keep_latest,
            grace_seconds=self.settings.cleanup_grace_seconds,
            started_at=policy.now,
            duration_seconds=round(time.perf_counter() - start, 6),
            stores=summaries,
        )
        self._record(completed, request_id)
        return completed

    def _clean(self, store: Store[Any], policy: Policy) -> StoreCleanupSummary:
        tally = _Tally(store.backend)
        start = time.perf_counter()
        try:
            newest = self._newest(store)
        except Exception:
            tally.errors += 1
            log.exception(
                "cleanup: cannot list the store; nothing deleted from it this run",
                extra={"store": store.backend},
            )
            return tally.summary(time.perf_counter() - start)
        batch: list[Listed[Any]] = []
        try:
            for item in store.list(self.namespaces):
                tally.scanned += 1
                record = item.record
                if record.expired(policy.now, policy.stricter_ttl):
                    tally.expired += 1
                rule = policy.keeps(record, newest)
                if rule is not None:
                    tally.retained[rule] += 1
                elif policy.dry_run:
                    tally.deleted += 1
                else:
                    batch.append(item)
                    if len(batch) >= self.settings.cleanup_page_size:
                        self._delete(store, batch, policy, newest, tally)
                        batch = []
        except Exception:
            tally.errors += 1
            log.exception(
                "cleanup: listing the store failed midway; the rest waits for the next run",
                extra={"store": store.backend},
            )
        if batch:
            self._delete(store, batch, policy, newest, tally)
        swept = store.sweep_leftovers(policy.now - policy.grace, policy.dry_run)
        tally.leftovers += swept.removed
        tally.errors += swept.errors
        return tally.summary(time.perf_counter() - start)

    def _newest(self, store: Store[Any]) -> frozenset[ContextKey]:
        """The newest `keep_latest` contexts of each function (by createdAt), in bounded memory."""
        keep = self.settings.keep_latest
        if keep == 0:
            return frozenset()
        heaps: dict[tuple[str, str], list[tuple[datetime, datetime, str]]] = {}
        for item in store.list(self.namespaces):
            record = item.record
            heap = heaps.setdefault((record.namespace, record.function), [])
            entry = (record.created_at, record.expires_at, record.content_hash)
            if len(heap) < keep:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
        return frozenset(
            (namespace, function, content_hash)
            for (namespace, function), heap in heaps.items()
            for _, _, content_hash in heap
        )

    def _delete(
        self,
        store: Store[Any],
        batch: Sequence[Listed[Any]],
        policy: Policy,
        newest: frozenset[ContextKey],
        tally: _Tally,
    ) -> None:
        listed = {context_key(item.record): item.record for item in batch}

        def still_expired(current: ContextRecord) -> bool:
            before = listed.get(context_key(current))
            return before is not None and policy.still_deletable(current, before, newest)

        try:
            outcomes = store.delete_many(batch, still_expired)
        except Exception as error:
            outcomes = [error] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                tally.errors += 1
                log.warning(
                    "cleanup: could not delete a context; the run goes on",
                    exc_info=outcome,
                    extra=_where(store, item.record),
                )
            elif outcome is Deletion.DELETED:
                tally.deleted += 1
                log.debug("cleanup: deleted", extra=_where(store, item.record))
            elif outcome is Deletion.KEPT:
                tally.retained[REFRESHED] += 1
            else:
                tally.gone += 1

    def _record(self, completed: CleanupCompleted, request_id: str) -> None:
        """Metrics and the one log line of a run; a dry run is counted but sets no last-run."""
        dry_run = str(completed.dry_run).lower()
        errors = sum(s.errors for s in completed.stores)
        outcome = {"outcome": "errors" if errors else "ok", "dry_run": dry_run}
        self.telemetry.cleanup_runs.add(1, outcome)
        self.telemetry.cleanup_duration.record(completed.duration_seconds, outcome)
        if not completed.dry_run:
            self.telemetry.cleanup_last_run.set(time.time())
        for summary in completed.stores:
            counts: list[tuple[str, dict[str, str], int]] = [
                ("deleted", {}, summary.deleted),
                ("failed", {}, summary.errors),
            ]
            counts += [("retained", {"rule": r}, n) for r, n in summary.retained.items()]
            for action, rule, n in counts:
                if n:
                    attributes = {"store": summary.store, "action": action, "dry_run": dry_run}
                    self.telemetry.cleanup_contexts.add(n, {**attributes, **rule})
        log.log(
            logging.WARNING if errors else logging.INFO,
            "cleanup completed",
            extra={
                "requestId": request_id,
                "dryRun": completed.dry_run,
                "errors": errors,
                "durationSeconds": completed.duration_seconds,
                "stores": [s.wire() for s in completed.stores],
            },
        )


def _where(store: Store[Any], record: ContextRecord) -> dict[str, str]:
    return {
        "store": store.backend,
        "namespace": record.namespace,
        "function": record.function,
        "contentHash": record.content_hash,
    }
