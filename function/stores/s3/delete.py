"""Deleting under a claim: one key (`delete`), or a page with one DeleteObjects call
(`delete_many`). A refresh keeps the ETag, so `If-Match` alone cannot see it; the claim can."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..base import Deletion, Listed, Outcomes, StillExpired
from ..failures import NotFound, PreconditionFailed, Unavailable, Unsupported
from . import errors
from .bucket import DELETE_CONCURRENCY, Bucket, Head
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


@dataclass
class Deleter:
    bucket: Bucket
    claims: Claims
    layout: Layout
    batch_limit: int = BATCH_LIMIT
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
        """Each key claimed and re-checked as `delete` does (a few at a time), then one
        DeleteObjects call for every key that still qualifies, and one that releases the claims."""
        outcomes: Outcomes = []
        with ThreadPoolExecutor(DELETE_CONCURRENCY, thread_name_prefix="s3-delete") as pool:
            for start in range(0, len(items), self.batch_limit):
                batch = items[start : start + self.batch_limit]
                outcomes += self._delete_batch(pool, batch, still_expired)
        return outcomes

    def _qualifies(self, current: Head, still_expired: StillExpired) -> bool:
        if not managed(current.metadata):
            return False
        try:
            return still_expired(self.layout.record(current.key, current.metadata, current.retain))
        except (KeyError, ValueError):
            return False

    def _delete_batch(
        self,
        pool: ThreadPoolExecutor,
        items: Sequence[Listed[Head]],
        still_expired: StillExpired,
    ) -> Outcomes:
        """Claims and re-reads run in `pool`; `still_expired` runs here, in the caller's thread.

        Once the oldest claim is half the hold old, or when every key is through, what passed
        its re-check is deleted and the claims are released: each delete leaves well within its
        claim's hold, and no request waits long for a claim.
        """
        outcomes: Outcomes = [Deletion.GONE] * len(items)
        pending: dict[Future[tuple[float, Head | None] | None], int] = {
            pool.submit(contextvars.copy_context().run, self._claim_and_reread, item.handle.key): i
            for i, item in enumerate(items)
        }
        claimed: list[str] = []
        due: list[_Due] = []
        deadline = math.inf
        try:
            while pending:
                timeout = max(0.0, deadline - self._now()) if claimed else None
                done, _ = wait(pending, timeout, FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        claim = future.result()
                    except Exception as error:
                        outcomes[index] = error
                        continue
                    if claim is None:
                        continue
                    claimed_at, current = claim
                    claimed.append(items[index].handle.key)
                    deadline = min(deadline, claimed_at + self._hold / 2)
                    if current is None:
                        continue
                    outcomes[index] = Deletion.KEPT
                    if self._qualifies(current, still_expired):
                        due.append(_Due(index, current.key, current.etag, claimed_at))
                if claimed and self._now() >= deadline:
                    self._delete_due(due, outcomes)
                    self.claims.release_many(claimed)
                    due, claimed, deadline = [], [], math.inf
            self._delete_due(due, outcomes)
        finally:
            for future, index in pending.items():
                with contextlib.suppress(Exception):
                    if future.result() is not None:
                        claimed.append(items[index].handle.key)
            self.claims.release_many(claimed)
        return outcomes

    def _claim_and_reread(self, key: str) -> tuple[float, Head | None] | None:
        """When the claim was sought and the object as it is under it; None when not claimed."""
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
