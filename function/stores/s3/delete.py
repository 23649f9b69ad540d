"""Deleting under a claim: one key (`delete`), or a page with one DeleteObjects call
(`delete_many`). A refresh keeps the ETag, so `If-Match` alone cannot see it; the claim can."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import math
from collections.abc import MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from ..base import Deletion, Listed, Outcomes, StillExpired
from ..failures import NotFound, PreconditionFailed, Unavailable, Unsupported
from . import errors
from .bucket import Bucket, Head
from .claims import BATCH_LIMIT, Claims
from .codec import Layout, managed

log = logging.getLogger("build_context.s3")

Outcome = Deletion | Exception


@dataclass(frozen=True)
class _Due:
    """A claimed context that passed its re-check, waiting for the page's DeleteObjects call."""

    index: int
    key: str
    etag: str
    claimed_at: float


Claim = tuple[float, Head | None] | None
"""When a claim was sought and the object as it is under it; None when not claimed."""


@dataclass
class Deleter:
    bucket: Bucket
    claims: Claims
    layout: Layout
    batch_limit: int = BATCH_LIMIT
    concurrency: int = 8
    """Claims and re-reads in flight at once, on the one shared client."""
    conditional: bool = True
    """Whether the server honours ETag conditions on deletes (learnt on the first refusal)."""

    @property
    def _hold(self) -> float:
        return self.claims.times.hold

    def _now(self) -> float:
        return self.claims.monotonic()

    def delete(self, item: Listed[Head], still_expired: StillExpired) -> Deletion:
        """Claim the key, re-read and re-check the object, delete it, release the claim."""
        key = item.handle.key
        claimed = self._now()
        if not self.claims.take(key):
            return Deletion.GONE
        try:
            current = self.bucket.head(key, with_tags=True)
            if current is None:
                return Deletion.GONE
            if not self._qualifies(current, still_expired):
                return Deletion.KEPT
            if self._now() - claimed > self._hold:
                return Deletion.KEPT
            return self._delete(current)
        finally:
            self.claims.release(key)

    def delete_many(self, items: Sequence[Listed[Head]], still_expired: StillExpired) -> Outcomes:
        """Each key claimed and re-checked as `delete` does (`concurrency` at a time), then one
        DeleteObjects call for every key that still qualifies, and one that releases the claims."""
        outcomes: Outcomes = [Deletion.GONE] * len(items)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-delete") as pool:
            for start in range(0, len(items), self.batch_limit):
                held = _Held(self, outcomes)
                try:
                    self._claim_batch(pool, items, start, still_expired, held)
                    held.settle()
                finally:
                    held.release()
        return outcomes

    def _qualifies(self, current: Head, still_expired: StillExpired) -> bool:
        if not managed(current.metadata):
            return False
        try:
            return still_expired(self.layout.record(current.key, current.metadata, current.retain))
        except (KeyError, ValueError):
            return False

    def _claim_batch(
        self,
        pool: ThreadPoolExecutor,
        items: Sequence[Listed[Head]],
        start: int,
        still_expired: StillExpired,
        held: _Held,
    ) -> None:
        """Claims and re-reads run in `pool` (`concurrency` threads); twice as many wait
        submitted, so a thread never idles until this one wakes up. `still_expired` runs
        here, in the caller's thread.

        Once the oldest claim is half the hold old, what passed its re-check so far is deleted
        and the claims are released: each delete leaves well within its claim's hold, and no
        request waits long for a claim.
        """
        indexes = iter(range(start, min(len(items), start + self.batch_limit)))
        window: dict[Future[Claim], int] = {}
        try:
            while True:
                for index in itertools.islice(indexes, 2 * self.concurrency - len(window)):
                    key = items[index].handle.key
                    run = contextvars.copy_context().run
                    window[pool.submit(run, self._claim_and_reread, key)] = index
                if not window:
                    return
                done, _ = wait(window, held.timeout(), FIRST_COMPLETED)
                for future in done:
                    index = window.pop(future)
                    held.add(index, items[index].handle.key, future, still_expired)
                if held.overdue():
                    held.settle()
        finally:
            for future, index in window.items():  # claims still in flight when a step failed
                with contextlib.suppress(Exception):
                    if future.result() is not None:
                        held.claimed.append(items[index].handle.key)

    def _claim_and_reread(self, key: str) -> Claim:
        claimed_at = self._now()
        if not self.claims.take(key):
            return None
        try:
            return claimed_at, self.bucket.head(key, with_tags=True)
        except BaseException:
            self.claims.release(key)
            raise

    def _delete_due(self, due: Sequence[_Due], outcomes: MutableSequence[Outcome]) -> None:
        """One DeleteObjects call, one attempt: a retry could land after the claims went stale.

        Each key carries the ETag of its re-read where the server honours it. A key whose
        claim is older than the hold stays (KEPT) for the next run.
        """
        timely = self._timely(due)
        if not timely:
            return
        conditional = self.conditional
        objects = [{"Key": d.key, **({"ETag": d.etag} if conditional else {})} for d in timely]
        try:
            answer = self.bucket.delete_objects(objects, quiet=False, once=True)
        except Unsupported as refused:
            if not conditional:
                self._fail(timely, refused, outcomes)
                return
            log.warning("S3 store: the server refuses ETag conditions on DeleteObjects")
            self.conditional = False
            self._delete_due(timely, outcomes)
        except Exception as error:
            self._fail(timely, error, outcomes)
        else:
            self._answered(timely, answer, outcomes)

    def _timely(self, due: Sequence[_Due]) -> list[_Due]:
        now = self._now()
        timely = [d for d in due if now - d.claimed_at <= self._hold]
        if len(timely) < len(due):
            log.warning(
                "S3 store: deletion claims held too long; those contexts wait for the next run",
                extra={
                    "store": self.bucket.calls.backend,
                    "bucket": self.bucket.name,
                    "late": len(due) - len(timely),
                },
            )
        return timely

    @staticmethod
    def _fail(timely: Sequence[_Due], error: Exception, outcomes: MutableSequence[Outcome]) -> None:
        for d in timely:
            outcomes[d.index] = error

    def _answered(
        self,
        timely: Sequence[_Due],
        answer: dict[str, Any],
        outcomes: MutableSequence[Outcome],
    ) -> None:
        deleted = {entry["Key"] for entry in answer.get("Deleted", [])}
        failed = {entry["Key"]: entry for entry in answer.get("Errors", [])}
        for d in timely:
            if d.key in deleted:
                outcomes[d.index] = Deletion.DELETED
            elif d.key in failed:
                outcomes[d.index] = self._key_error(d.key, failed[d.key])
            else:
                outcomes[d.index] = Unavailable(
                    f"S3 store: DeleteObjects on s3://{self.bucket.name}/{d.key} at "
                    f"{self.bucket.endpoint} answered neither Deleted nor Errors for it; the next "
                    "cleanup run tries again"
                )

    def _key_error(self, key: str, entry: dict[str, str]) -> Outcome:
        """KEPT for a key changed meanwhile (`ETag` no longer matches), GONE for one deleted."""
        said = {"Error": {"Code": entry.get("Code", ""), "Message": entry.get("Message", "")}}
        bucket = self.bucket
        where = errors.Call("delete_objects", bucket.name, key, bucket.prefix, bucket.endpoint)
        failure = errors.translate(ClientError(said, "DeleteObjects"), 1, where)
        if isinstance(failure, PreconditionFailed):
            return Deletion.KEPT
        if isinstance(failure, NotFound):
            return Deletion.GONE
        return failure if failure is not None else Deletion.KEPT

    def _delete(self, current: Head) -> Deletion:
        """One attempt only: a retry could land after the claim went stale."""
        condition = {"IfMatch": current.etag} if self.conditional else {}
        try:
            self.bucket.send("delete_object", current.key, once=True, **condition)
        except Unsupported:
            if not condition:
                return Deletion.KEPT
            log.warning("S3 store: the server ignores If-Match on DeleteObject; deleting")
            self.conditional = False
            return self._delete(current)
        except PreconditionFailed:
            return Deletion.KEPT
        except NotFound:
            return Deletion.GONE
        return Deletion.DELETED


@dataclass
class _Held:
    """The claims one batch holds, and what passed its re-check, until they are settled:
    the due keys deleted with one DeleteObjects call, then every claim released."""

    deleter: Deleter
    outcomes: MutableSequence[Outcome]
    claimed: list[str] = field(default_factory=list)
    due: list[_Due] = field(default_factory=list)
    deadline: float = math.inf
    """Half the hold after the oldest claim still held: settle by then."""

    def add(self, index: int, key: str, claim: Future[Claim], still_expired: StillExpired) -> None:
        """The outcome of one claim and re-read: GONE unless it was claimed and still there."""
        try:
            taken = claim.result()
        except Exception as error:
            self.outcomes[index] = error
            return
        if taken is None:
            return
        claimed_at, current = taken
        self.claimed.append(key)
        self.deadline = min(self.deadline, claimed_at + self.deleter.claims.times.hold / 2)
        if current is None:
            return
        self.outcomes[index] = Deletion.KEPT
        if self.deleter._qualifies(current, still_expired):
            self.due.append(_Due(index, current.key, current.etag, claimed_at))

    def timeout(self) -> float | None:
        """How long to wait for the next claim before settling (None: no claim held)."""
        if not self.claimed:
            return None
        return max(0.0, self.deadline - self.deleter.claims.monotonic())

    def overdue(self) -> bool:
        return bool(self.claimed) and self.deleter.claims.monotonic() >= self.deadline

    def settle(self) -> None:
        """Delete what is due, then release every claim held."""
        due, self.due = self.due, []
        self.deleter._delete_due(due, self.outcomes)
        self.release()

    def release(self) -> None:
        claimed, self.claimed, self.deadline = self.claimed, [], math.inf
        if claimed:
            self.deleter.claims.release_many(claimed)
