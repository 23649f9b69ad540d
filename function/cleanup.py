"""The cleanup use-case: delete what has expired in every store, and nothing a rule keeps.

One pass per store, in flat memory: a context is settled as soon as `keep_latest` newer ones of
its function have been listed (it is not among the newest), so only the newest few of each
function wait for the end of the listing, or, for a store that lists a function's contexts
together, for the end of that function. Every delete goes through the store's re-check of the
freshest record, so a context that a request reused (or a user pinned) while the run was going
stays.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
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

    def keeps(self, record: ContextRecord, newest: bool) -> str | None:
        """The first rule that keeps the context, or None when it may go; `newest`: it is
        among the newest `keep_latest` of its function."""
        if not record.expired(self.now, self.stricter_ttl):
            return ACTIVE
        if record.retain:
            return PINNED
        if newest:
            return KEEP_LATEST
        if self.now - record.created_at < self.grace:
            return GRACE
        return None

    def still_deletable(self, current: ContextRecord, listed: ContextRecord) -> bool:
        """True only for the very record we listed, not refreshed, and still kept by no rule
        (a context sent to be deleted is never among the newest of its function)."""
        return (
            current.created_at == listed.created_at
            and current.expires_at <= listed.expires_at
            and self.keeps(current, newest=False) is None
        )


class _Newest:
    """The newest `keep` contexts of each function listed so far. A context that `keep` newer
    ones of its function push out is settled at once: not among the newest. The rest are
    settled as the newest when the listing ends, or, with `grouped` (the store lists a
    function's contexts one after another), when the listing moves on to another function."""

    def __init__(self, keep: int, grouped: bool) -> None:
        self.keep = keep
        self.grouped = grouped
        self.heaps: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        self.order = itertools.count()
        """The last tie-breaker (after creation, expiry, content hash): a heap never compares
        two items."""

    def add(self, item: Listed[Any]) -> Iterator[tuple[Listed[Any], bool]]:
        """What `item` settles: (context, among the newest of its function)."""
        if self.keep == 0:
            yield item, False
            return
        record = item.record
        function = (record.namespace, record.function)
        if self.grouped and function not in self.heaps:
            yield from self.rest()
        heap = self.heaps.setdefault(function, [])
        entry = (record.created_at, record.expires_at, record.content_hash, next(self.order), item)
        if len(heap) < self.keep:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            yield heapq.heapreplace(heap, entry)[-1], False
        else:
            yield item, False

    def rest(self) -> Iterator[tuple[Listed[Any], bool]]:
        """Every context still held: the newest of its function."""
        heaps, self.heaps = self.heaps, {}
        for heap in heaps.values():
            for entry in heap:
                yield entry[-1], True


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
        start = time.perf_counter()
        run = _StoreRun(store, policy, self.settings.cleanup_page_size)
        newest = _Newest(self.settings.keep_latest, store.lists_by_function)
        try:
            for item in store.list(self.namespaces):
                run.tally.scanned += 1
                if item.record.expired(policy.now, policy.stricter_ttl):
                    run.tally.expired += 1
                for settled, among_newest in newest.add(item):
                    run.judge(settled, among_newest)
        except Exception:
            run.tally.errors += 1
            log.exception(
                "cleanup: listing the store failed; what was listed is cleaned, the rest waits "
                "for the next run",
                extra={"store": store.backend},
            )
            listed = False
        else:
            listed = True
        for settled, among_newest in newest.rest():
            run.judge(settled, among_newest)
        run.flush()
        if listed:
            swept = store.sweep_leftovers(policy.now - policy.grace, policy.dry_run)
            run.tally.leftovers += swept.removed
            run.tally.errors += swept.errors
        return run.tally.summary(time.perf_counter() - start)

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


class _StoreRun:
    """One store's pass: the tally, and the batch of contexts waiting to be deleted."""

    def __init__(self, store: Store[Any], policy: Policy, page_size: int) -> None:
        self.store = store
        self.policy = policy
        self.page_size = page_size
        self.tally = _Tally(store.backend)
        self.batch: list[Listed[Any]] = []

    def judge(self, item: Listed[Any], newest: bool) -> None:
        rule = self.policy.keeps(item.record, newest)
        if rule is not None:
            self.tally.retained[rule] += 1
        elif self.policy.dry_run:
            self.tally.deleted += 1
        else:
            self.batch.append(item)
            if len(self.batch) >= self.page_size:
                self.flush()

    def flush(self) -> None:
        """Delete the batch, each context re-checked on its freshest record by the store."""
        batch, self.batch = self.batch, []
        if not batch:
            return
        listed = {context_key(item.record): item.record for item in batch}

        def still_expired(current: ContextRecord) -> bool:
            before = listed.get(context_key(current))
            return before is not None and self.policy.still_deletable(current, before)

        try:
            outcomes = self.store.delete_many(batch, still_expired)
        except Exception as error:
            outcomes = [error] * len(batch)
        tally = self.tally
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                tally.errors += 1
                log.warning(
                    "cleanup: could not delete a context; the run goes on",
                    exc_info=outcome,
                    extra=_where(self.store, item.record),
                )
            elif outcome is Deletion.DELETED:
                tally.deleted += 1
                log.debug("cleanup: deleted", extra=_where(self.store, item.record))
            elif outcome is Deletion.KEPT:
                tally.retained[REFRESHED] += 1
            else:
                tally.gone += 1
