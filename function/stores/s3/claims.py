"""The deletion claim: an empty `<key>.deleting` object cleanup holds while it re-checks and
deletes a context, and that a request reusing the context waits out (docs/s3.md, Races)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime

from ...errors import BuildContextError, StorageUnavailable
from ..base import MANAGED_BY
from ..failures import NotFound, PreconditionFailed
from .bucket import Bucket
from .codec import MARKER

log = logging.getLogger("build_context.s3")

SUFFIX = ".deleting"
BATCH_LIMIT = 1000
"""Keys per DeleteObjects call: S3's maximum."""


@dataclass(frozen=True)
class ClaimTimes:
    hold: float = 5.0
    """Longest a delete may be sent after its claim was taken."""
    wait: float = 10.0
    """Longest a request waits for a held claim before it answers retryably."""
    poll: float = 0.05


CLAIM_TIMES = ClaimTimes()


@dataclass(frozen=True)
class Claims:
    bucket: Bucket
    times: ClaimTimes = CLAIM_TIMES
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    @property
    def stale(self) -> timedelta:
        """Age after which a claim is ignored: longer than any delete its holder may still send."""
        read_timeout = float(self.bucket.client.meta.config.read_timeout or 60)
        return timedelta(seconds=self.times.hold + read_timeout + 30)

    def take(self, key: str) -> bool:
        """True when this caller now holds the claim on `key` (a stale one is taken over)."""
        bucket, claim = self.bucket, key + SUFFIX
        for _ in range(2):
            if bucket.put_new(claim, b"", Metadata={MARKER: MANAGED_BY}):
                return True
            held = self.held(key)
            if held is None:
                continue
            etag, age = held
            if age < self.stale:
                return False
            with contextlib.suppress(PreconditionFailed, NotFound):
                bucket.send("delete_object", claim, IfMatch=etag)
        return False

    def release(self, key: str) -> None:
        bucket, claim = self.bucket, key + SUFFIX
        try:
            bucket.send("delete_object", claim)
        except NotFound:
            pass
        except BuildContextError as error:
            log.error(
                "S3 store: could not release a deletion claim; requests for it wait until it "
                "is stale",
                extra=bucket.log_fields("delete_object", claim, error),
            )

    def release_many(self, keys: Sequence[str]) -> None:
        bucket = self.bucket
        for start in range(0, len(keys), BATCH_LIMIT):
            claims = [key + SUFFIX for key in keys[start : start + BATCH_LIMIT]]
            try:
                answer = bucket.delete_objects([{"Key": claim} for claim in claims], quiet=True)
            except BuildContextError as error:
                failed = [{"Key": claim, "Message": error.message} for claim in claims]
            else:
                failed = answer.get("Errors", [])
            for entry in failed:
                log.error(
                    "S3 store: could not release a deletion claim; requests for it wait until it "
                    "is stale",
                    extra={
                        "store": bucket.calls.backend,
                        "operation": "delete_objects",
                        "bucket": bucket.name,
                        "key": entry["Key"],
                        "endpoint": bucket.endpoint,
                        "error": f"{entry.get('Code', '')} {entry.get('Message', '')}".strip(),
                    },
                )

    def held(self, key: str) -> tuple[str, timedelta] | None:
        """ETag and age (by the server's clock) of the claim on `key`, or None when none."""
        found = self.bucket.head_object(key + SUFFIX)
        if found is None:
            return None
        now = parsedate_to_datetime(found["ResponseMetadata"]["HTTPHeaders"]["date"])
        return str(found["ETag"]), now - found["LastModified"]

    def wait_while_claimed(self, key: str) -> None:
        deadline = self.monotonic() + self.times.wait
        while (held := self.held(key)) and held[1] < self.stale:
            if self.monotonic() > deadline:
                raise StorageUnavailable(
                    f"S3 store: a cleanup run has been deleting s3://{self.bucket.name}/{key} for "
                    f"{held[1].total_seconds():.0f}s; the request can be retried"
                )
            self.sleep(self.times.poll)
