"""S3 or any S3-compatible server: <prefix><namespace>/<function>/<contentHash>.tar.gz.

The object appears whole or not at all: a single conditional PUT (`If-None-Match: *`), or a
multipart upload completed with the same condition and aborted on any failure. The record lives
in the object's user metadata next to a `managed-by` marker, so listing and cleanup never touch
objects we did not write. A `build-context.dev/retain=true` object tag pins a context.

Refresh (pushing the expiry of a reused context forward) is a metadata self-copy, which keeps
the ETag, so `If-Match` cannot tell cleanup about it. Cleanup therefore claims a key (an empty
`<key>.deleting` object written with `If-None-Match`) for its re-check and delete, and a reuse
re-reads the object after seeing no claim. docs/s3.md, Races, has the argument. Cleanup sends
its deletes a page at a time (`delete_many`): the same claim and re-check per key, then one
DeleteObjects call for the keys that still qualify.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from opentelemetry import trace

from ..archive import Archive
from ..contract import OwnerReference
from ..errors import (
    BuildContextError,
    ConfigurationError,
    ContextTooLarge,
    StorageConflict,
    StorageForbidden,
    StorageUnavailable,
)
from ..retry import RetryPolicy
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import (
    MANAGED_BY,
    RETAIN,
    ContextRecord,
    Listed,
    Store,
    Stored,
    record_fields,
    record_from_fields,
)

T = TypeVar("T")
log = logging.getLogger("build_context.s3")

ARCHIVE_TYPE = "application/gzip"
SUFFIX = ".tar.gz"
MARKER = "managed-by"
MIN_PART_BYTES = 5 * 1024 * 1024
METADATA_BUDGET = 2000
"""AWS allows 2 KiB of user metadata; the request's own metadata is left out beyond this."""
REQUEST_ID_LIMIT = 256
CLAIM_SUFFIX = ".deleting"
"""An empty object cleanup holds while it re-checks and deletes a context."""
CLAIM_HOLD_SECONDS = 5.0
CLAIM_WAIT_SECONDS = 10.0
CLAIM_POLL_SECONDS = 0.05
_ONCE = RetryPolicy(attempts=1)
LIST_CONCURRENCY = 8
LIST_PAGE_LIMIT = 100
"""Keys per ListObjectsV2 page at most: parsing a page costs about 3.5 KB per key."""
DELETE_CONCURRENCY = 8
"""Claims and re-checks of a page in flight at once, on the one shared client."""
DELETE_BATCH_LIMIT = 1000
"""Keys per DeleteObjects call: S3's maximum."""

_FORBIDDEN = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "Forbidden",
        "403",
    }
)
_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_TAKEN = "PreconditionFailed"
_IAM_ACTION = {
    "head_object": "s3:GetObject (and s3:ListBucket, without which a missing key is a 403)",
    "get_object": "s3:GetObject",
    "get_object_tagging": "s3:GetObjectTagging",
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "copy_object": "s3:GetObject and s3:PutObject",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
}


def s3_client(settings: Settings, session: boto3.session.Session | None = None) -> Any:
    """One client per process: boto3 clients are thread-safe, sessions are not.

    botocore's own retries are off (our RetryPolicy counts and bounds them), and so are the
    newer default checksums, which several S3-compatible servers reject; every upload carries
    a Content-MD5 instead.
    """
    config = Config(
        region_name=settings.s3_region or None,
        s3={"addressing_style": "path" if settings.s3_force_path_style else "auto"},
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(5.0, settings.retry_deadline_seconds),
        read_timeout=settings.retry_deadline_seconds,
        max_pool_connections=settings.threads + LIST_CONCURRENCY + DELETE_CONCURRENCY,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="build-context",
    )
    try:
        return (session or boto3.session.Session()).client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, config=config
        )
    except ValueError as exc:
        raise ConfigurationError(
            "BUILD_CONTEXT_S3_ENDPOINT_URL",
            str(exc),
            "Give a full URL such as http://minio.storage.svc:9000, or leave it empty for AWS.",
        ) from None


@dataclass(frozen=True)
class _Head:
    key: str
    etag: str
    last_modified: datetime
    metadata: dict[str, str]
    retain: bool = False


@dataclass(frozen=True)
class _Due:
    """A claimed context that passed its re-check, waiting for the page's DeleteObjects call."""

    index: int
    key: str
    etag: str
    claimed_at: float


class _Taken(Exception):
    """Another writer's object holds the key (our conditional write lost)."""


class _PartReader(io.RawIOBase):
    """A seekable file over a slice of the archive, so a part is sent without copying it."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._position : self._position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return len(self._view)


class S3Store(Store):
    backend = "s3"

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "build-contexts/",
        *,
        sse: str = "",
        sse_kms_key_id: str = "",
        multipart_threshold: int = 8 * 1024 * 1024,
        page_size: int = 500,
        retry: RetryPolicy | None = None,
        telemetry: Telemetry = NOOP,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.multipart_threshold = multipart_threshold
        self.part_bytes = max(MIN_PART_BYTES, multipart_threshold)
        self.page_size = page_size
        self.retry = retry or RetryPolicy()
        self.telemetry = telemetry
        self.encryption: dict[str, str] = {}
        if sse:
            self.encryption["ServerSideEncryption"] = sse
        if sse == "aws:kms" and sse_kms_key_id:
            self.encryption["SSEKMSKeyId"] = sse_kms_key_id
        self._conditional_delete = True
        client.meta.events.register(
            "before-sign.s3.DeleteObjects", _content_md5, unique_id="build-context.content-md5"
        )
        self._layout = re.compile(
            re.escape(prefix) + r"([a-z0-9-]+)/([a-z0-9-]+)/([0-9a-f]{64})" + re.escape(SUFFIX)
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        telemetry: Telemetry = NOOP,
        session: boto3.session.Session | None = None,
    ) -> S3Store:
        return cls(
            s3_client(settings, session),
            settings.s3_bucket,
            settings.s3_prefix,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            multipart_threshold=settings.s3_multipart_threshold_bytes,
            page_size=settings.cleanup_page_size,
            retry=RetryPolicy.from_settings(settings),
            telemetry=telemetry,
        )

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    @property
    def region(self) -> str:
        return str(self.client.meta.region_name)

    def key(self, namespace: str, function: str, content_hash: str) -> str:
        return f"{self.prefix}{namespace}/{function}/{content_hash}{SUFFIX}"

    def check(self) -> None:
        """A missing bucket or no credentials stop start-up; anything else only warns.

        Access can be granted and endpoints can come back after the function started; each
        request then answers StorageForbidden or a retryable StorageUnavailable.
        """
        try:
            with self._span("list_objects_v2", self.prefix):
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ClientError as error:
            if _code(error) in ("NoSuchBucket", "404"):
                raise ConfigurationError(
                    "BUILD_CONTEXT_S3_BUCKET",
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}",
                    "Create it or fix the name (and BUILD_CONTEXT_S3_ENDPOINT_URL).",
                ) from None
            log.warning(
                "S3 store: start-up probe refused; requests will fail until it is fixed",
                extra=self._log_fields("list_objects_v2", self.prefix, error),
            )
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigurationError(
                "AWS_ACCESS_KEY_ID",
                "no AWS credentials found for the S3 store",
                "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the pod a role "
                "(IRSA, EKS Pod Identity); see docs/s3.md.",
            ) from None
        except BotoCoreError as error:
            log.warning(
                "S3 store: endpoint not reachable at start-up; requests will retry",
                extra=self._log_fields("list_objects_v2", self.prefix, error),
            )

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        """Upload once; a reuse answers only after the object showed the wanted expiry, no
        cleanup claimed it since, and it was still there after that (docs/s3.md, Races)."""
        key = self.key(record.namespace, record.function, record.content_hash)
        unclaimed = False
        for _ in range(8):
            current = self._head(key)
            if current is None:
                try:
                    self._upload(key, archive, record)
                except _Taken:
                    unclaimed = False
                    continue
                return self._stored(key, record, reused=False)
            existing = self._managed_record(current)
            wanted = existing.refreshed(record.expires_at)
            if wanted != existing:
                self._refresh(current, wanted)
                unclaimed = False
            elif unclaimed:
                return self._stored(key, existing, reused=True)
            else:
                self._wait_while_claimed(key)
                unclaimed = True
        raise StorageUnavailable(
            f"S3 store: s3://{self.bucket}/{key} kept changing under concurrent writers; "
            "the request can be retried"
        )

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        key = self.key(namespace, function, content_hash)
        try:
            data: bytes = self._call(
                "get_object",
                key,
                lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
                allow=_MISSING,
            )
            return data
        except ClientError:
            raise KeyError((namespace, function, content_hash)) from None

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed]:
        """Page by page; the objects of a page are read (HEAD and tags) a few at a time."""
        prefixes = (
            [self.prefix]
            if namespaces is None
            else [f"{self.prefix}{ns}/" for ns in sorted(namespaces)]
        )
        with ThreadPoolExecutor(LIST_CONCURRENCY, thread_name_prefix="s3-list") as pool:
            for prefix in prefixes:
                for keys in self._pages(prefix):
                    for head in pool.map(self._head_for_listing, keys):
                        if head is not None and (listed := self._listed(head)) is not None:
                            yield listed

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        prefix = f"{self.prefix}{namespace}/{function}/"
        with ThreadPoolExecutor(LIST_CONCURRENCY, thread_name_prefix="s3-list") as pool:
            for keys in self._pages(prefix):
                for head in pool.map(self._head_for_listing, keys):
                    if head is not None and (listed := self._listed(head)) is not None:
                        yield listed.record

    def function_sizes(self, namespace: str, function: str) -> Iterator[tuple[str, int]]:
        """From the listing alone: no object is read. An object under our layout that is not
        ours counts too, which only makes the caps look closer (then records are read)."""
        for page in self._page_items(f"{self.prefix}{namespace}/{function}/"):
            for key, size in page:
                if found := self._layout.fullmatch(key):
                    yield found.group(3), size

    def _head_for_listing(self, key: str) -> _Head | None:
        return self._head(key, with_tags=True, tag_count_hint=True)

    def _listed(self, head: _Head) -> Listed | None:
        if head.metadata.get(MARKER) != MANAGED_BY:
            return None
        try:
            return Listed(self._record(head), head)
        except (KeyError, ValueError) as error:
            log.warning(
                "S3 store: skipping an object with unreadable metadata",
                extra=self._log_fields("head_object", head.key, error),
            )
            return None

    def delete(self, item: Listed, still_expired: Callable[[ContextRecord], bool]) -> bool:
        """Claim the key, re-read and re-check the object, delete it, release the claim.

        A refresh keeps the ETag, so `If-Match` alone cannot see it; the claim can: a request
        reusing the context waits while a claim is held and re-reads the object after it.
        """
        listed: _Head = item.handle
        claimed = time.monotonic()
        if not self._claim(listed.key):
            return False
        try:
            current = self._head(listed.key, with_tags=True)
            if current is None or not self._qualifies(current, still_expired):
                return False
            if time.monotonic() - claimed > CLAIM_HOLD_SECONDS:
                return False
            return self._delete(current)
        finally:
            self._release(listed.key)

    def delete_many(
        self, items: Sequence[Listed], still_expired: Callable[[ContextRecord], bool]
    ) -> Sequence[bool | Exception]:
        """`delete` for a page: each key claimed and re-checked as `delete` does (a few at a
        time), then one DeleteObjects call for every key that still qualifies, and one more
        that releases the claims. One outcome per item, in order: True deleted, False kept,
        or the item's exception."""
        outcomes: list[bool | Exception] = []
        with ThreadPoolExecutor(DELETE_CONCURRENCY, thread_name_prefix="s3-delete") as pool:
            for start in range(0, len(items), DELETE_BATCH_LIMIT):
                batch = items[start : start + DELETE_BATCH_LIMIT]
                outcomes += self._delete_batch(pool, batch, still_expired)
        return outcomes

    def close(self) -> None:
        self.client.close()

    # --- deleting, and the claim that makes it safe against a concurrent refresh ---------

    def _qualifies(self, current: _Head, still_expired: Callable[[ContextRecord], bool]) -> bool:
        if current.metadata.get(MARKER) != MANAGED_BY:
            return False
        try:
            return still_expired(self._record(current))
        except (KeyError, ValueError):
            return False

    def _delete_batch(
        self,
        pool: ThreadPoolExecutor,
        items: Sequence[Listed],
        still_expired: Callable[[ContextRecord], bool],
    ) -> Sequence[bool | Exception]:
        """Claims and re-reads run in `pool`; `still_expired` runs here, in the caller's thread.

        Once the oldest claim is half the hold old, or when every key is through, what passed
        its re-check is deleted and the claims are released: each delete leaves well within its
        claim's hold, and no request waits long for a claim.
        """
        outcomes: list[bool | Exception] = [False] * len(items)
        pending: dict[Future[tuple[float, _Head | None] | None], int] = {
            pool.submit(contextvars.copy_context().run, self._claim_and_reread, item.handle.key): i
            for i, item in enumerate(items)
        }
        claimed: list[str] = []
        due: list[_Due] = []
        deadline = math.inf
        try:
            while pending:
                timeout = max(0.0, deadline - time.monotonic()) if claimed else None
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
                    deadline = min(deadline, claimed_at + CLAIM_HOLD_SECONDS / 2)
                    if current is not None and self._qualifies(current, still_expired):
                        due.append(_Due(index, current.key, current.etag, claimed_at))
                if claimed and time.monotonic() >= deadline:
                    self._delete_due(due, outcomes)
                    self._release_many(claimed)
                    due, claimed, deadline = [], [], math.inf
            self._delete_due(due, outcomes)
        finally:
            for future, index in pending.items():
                with contextlib.suppress(Exception):
                    if future.result() is not None:
                        claimed.append(items[index].handle.key)
            self._release_many(claimed)
        return outcomes

    def _claim_and_reread(self, key: str) -> tuple[float, _Head | None] | None:
        """When the claim was sought and the object as it is under it; None when not claimed."""
        claimed_at = time.monotonic()
        if not self._claim(key):
            return None
        try:
            return claimed_at, self._head(key, with_tags=True)
        except BaseException:
            self._release(key)
            raise

    def _delete_due(self, due: Sequence[_Due], outcomes: MutableSequence[bool | Exception]) -> None:
        """One DeleteObjects call, one attempt: a retry could land after the claims went stale.

        Each key carries the ETag of its re-read where the server honours it. A key whose
        claim is older than the hold stays for the next run.
        """
        now = time.monotonic()
        timely = [d for d in due if now - d.claimed_at <= CLAIM_HOLD_SECONDS]
        if len(timely) < len(due):
            log.warning(
                "S3 store: deletion claims held too long; those contexts wait for the next run",
                extra={
                    "store": self.backend,
                    "bucket": self.bucket,
                    "late": len(due) - len(timely),
                },
            )
        if not timely:
            return
        conditional = self._conditional_delete
        objects = [{"Key": d.key, **({"ETag": d.etag} if conditional else {})} for d in timely]
        try:
            answer = self._call(
                "delete_objects",
                self.prefix,
                functools.partial(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": objects, "Quiet": False},
                ),
                allow=frozenset({"NotImplemented"}),
                retry=False,
            )
        except ClientError as refused:
            if conditional:
                log.warning("S3 store: the server refuses ETag conditions on DeleteObjects")
                self._conditional_delete = False
                self._delete_due(timely, outcomes)
                return
            failure: Exception = self._failure("delete_objects", self.prefix, refused, 1)
        except BuildContextError as error:
            failure = error
        else:
            self._answered(timely, answer, outcomes)
            return
        for d in timely:
            outcomes[d.index] = failure

    def _answered(
        self,
        timely: Sequence[_Due],
        answer: dict[str, Any],
        outcomes: MutableSequence[bool | Exception],
    ) -> None:
        deleted = {entry["Key"] for entry in answer.get("Deleted", [])}
        errors = {entry["Key"]: entry for entry in answer.get("Errors", [])}
        for d in timely:
            if d.key in deleted:
                outcomes[d.index] = True
            elif d.key in errors:
                outcomes[d.index] = self._key_error(d.key, errors[d.key])
            else:
                outcomes[d.index] = StorageUnavailable(
                    f"S3 store: DeleteObjects on s3://{self.bucket}/{d.key} at {self.endpoint} "
                    "answered neither Deleted nor Errors for it; the next cleanup run tries again"
                )

    def _key_error(self, key: str, entry: dict[str, str]) -> bool | Exception:
        """False for a key changed (`ETag` no longer matches) or gone meanwhile; else a failure."""
        code = entry.get("Code", "")
        if code == _TAKEN or code in _MISSING:
            return False
        error = ClientError({"Error": {"Code": code, "Message": entry.get("Message", "")}}, "")
        return self._failure("delete_objects", key, error, 1)

    def _release_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH_LIMIT):
            claims = [key + CLAIM_SUFFIX for key in keys[start : start + DELETE_BATCH_LIMIT]]
            try:
                answer = self._call(
                    "delete_objects",
                    self.prefix,
                    functools.partial(
                        self.client.delete_objects,
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": claim} for claim in claims], "Quiet": True},
                    ),
                )
            except BuildContextError as error:
                failed = [{"Key": claim, "Message": error.message} for claim in claims]
            else:
                failed = answer.get("Errors", [])
            for entry in failed:
                log.error(
                    "S3 store: could not release a deletion claim; requests for it wait until it "
                    "is stale",
                    extra={
                        "store": self.backend,
                        "operation": "delete_objects",
                        "bucket": self.bucket,
                        "key": entry["Key"],
                        "endpoint": self.endpoint,
                        "error": f"{entry.get('Code', '')} {entry.get('Message', '')}".strip(),
                    },
                )

    def _delete(self, current: _Head) -> bool:
        """One attempt only: a retry could land after the claim went stale."""
        condition = {"IfMatch": current.etag} if self._conditional_delete else {}
        try:
            self._call(
                "delete_object",
                current.key,
                lambda: self.client.delete_object(Bucket=self.bucket, Key=current.key, **condition),
                allow=frozenset({_TAKEN, "NotImplemented", *_MISSING}),
                retry=False,
            )
        except ClientError as error:
            if _code(error) == "NotImplemented" and condition:
                log.warning("S3 store: the server ignores If-Match on DeleteObject; deleting")
                self._conditional_delete = False
                return self._delete(current)
            return False
        return True

    @property
    def claim_stale(self) -> timedelta:
        """Age after which a claim is ignored: longer than any delete its holder may still send."""
        read_timeout = float(self.client.meta.config.read_timeout or 60)
        return timedelta(seconds=CLAIM_HOLD_SECONDS + read_timeout + 30)

    def _claim(self, key: str) -> bool:
        claim = key + CLAIM_SUFFIX
        for _ in range(2):
            try:
                self._call(
                    "put_object",
                    claim,
                    lambda: self.client.put_object(
                        Bucket=self.bucket,
                        Key=claim,
                        Body=b"",
                        IfNoneMatch="*",
                        Metadata={MARKER: MANAGED_BY},
                        **self.encryption,
                    ),
                    allow=frozenset({_TAKEN}),
                )
                return True
            except ClientError:
                held = self._claim_held(claim)
                if held is None:
                    continue
                etag, age = held
                if age < self.claim_stale:
                    return False
                with contextlib.suppress(ClientError):
                    self._call(
                        "delete_object",
                        claim,
                        functools.partial(
                            self.client.delete_object, Bucket=self.bucket, Key=claim, IfMatch=etag
                        ),
                        allow=frozenset({_TAKEN, *_MISSING}),
                    )
        return False

    def _release(self, key: str) -> None:
        claim = key + CLAIM_SUFFIX
        try:
            self._call(
                "delete_object",
                claim,
                lambda: self.client.delete_object(Bucket=self.bucket, Key=claim),
                allow=_MISSING,
            )
        except BuildContextError as error:
            log.error(
                "S3 store: could not release a deletion claim; requests for it wait until it "
                "is stale",
                extra=self._log_fields("delete_object", claim, error),
            )

    def _head_object(self, key: str) -> dict[str, Any] | None:
        """HEAD of one key, or None when it does not exist."""
        try:
            found: dict[str, Any] = self._call(
                "head_object",
                key,
                lambda: self.client.head_object(Bucket=self.bucket, Key=key),
                allow=_MISSING,
            )
        except ClientError:
            return None
        return found

    def _claim_held(self, claim: str) -> tuple[str, timedelta] | None:
        """ETag and age (by the server's clock) of a claim, or None when there is none."""
        found = self._head_object(claim)
        if found is None:
            return None
        now = parsedate_to_datetime(found["ResponseMetadata"]["HTTPHeaders"]["date"])
        return str(found["ETag"]), now - found["LastModified"]

    def _wait_while_claimed(self, key: str) -> None:
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while (held := self._claim_held(key + CLAIM_SUFFIX)) and held[1] < self.claim_stale:
            if time.monotonic() > deadline:
                raise StorageUnavailable(
                    f"S3 store: a cleanup run has been deleting s3://{self.bucket}/{key} for "
                    f"{held[1].total_seconds():.0f}s; the request can be retried"
                )
            time.sleep(CLAIM_POLL_SECONDS)

    # --- writing ----------------------------------------------------------------------

    def _upload(self, key: str, archive: Archive, record: ContextRecord) -> None:
        attributes = {
            "ContentType": ARCHIVE_TYPE,
            "Metadata": object_metadata(record),
            **self.encryption,
        }
        if archive.size_bytes <= self.multipart_threshold:
            try:
                self._call(
                    "put_object",
                    key,
                    lambda: self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=archive.data,
                        ContentMD5=_md5(archive.data),
                        IfNoneMatch="*",
                        **attributes,
                    ),
                    allow=frozenset({_TAKEN}),
                )
            except ClientError:
                raise _Taken from None
            return
        self._upload_parts(key, memoryview(archive.data), attributes)

    def _upload_parts(self, key: str, data: memoryview, attributes: dict[str, Any]) -> None:
        upload_id: str = self._call(
            "create_multipart_upload",
            key,
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **attributes)[
                "UploadId"
            ],
        )
        try:
            parts = [
                {
                    "PartNumber": number,
                    "ETag": self._upload_part(
                        key, upload_id, number, data[start : start + self.part_bytes]
                    ),
                }
                for number, start in enumerate(range(0, len(data), self.part_bytes), start=1)
            ]
            self._call(
                "complete_multipart_upload",
                key,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
                allow=frozenset({_TAKEN, "NoSuchUpload"}),
            )
        except ClientError:
            # PreconditionFailed, or NoSuchUpload: a retried completion had already succeeded.
            self._abort(key, upload_id)
            raise _Taken from None
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _upload_part(self, key: str, upload_id: str, number: int, part: memoryview) -> str:
        etag: str = self._call(
            "upload_part",
            key,
            lambda: self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=_PartReader(part),
                ContentMD5=_md5(part),
            )["ETag"],
        )
        return etag

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                "abort_multipart_upload",
                key,
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
                allow=frozenset({"NoSuchUpload"}),
            )
        except (BuildContextError, ClientError) as error:
            log.error(
                "S3 store: could not abort a multipart upload; a lifecycle rule removes it",
                extra={
                    **self._log_fields("abort_multipart_upload", key, error),
                    "uploadId": upload_id,
                },
            )

    def _refresh(self, current: _Head, wanted: ContextRecord) -> None:
        """Copy the object onto itself with the later expiry, unless it changed since `current`.

        The caller re-reads the object either way: that confirms the new expiry, and finds an
        object that cleanup deleted meanwhile (which is then uploaded again).
        """
        with contextlib.suppress(ClientError):
            self._call(
                "copy_object",
                current.key,
                lambda: self.client.copy_object(
                    Bucket=self.bucket,
                    Key=current.key,
                    CopySource={"Bucket": self.bucket, "Key": current.key},
                    CopySourceIfUnmodifiedSince=current.last_modified,
                    MetadataDirective="REPLACE",
                    ContentType=ARCHIVE_TYPE,
                    Metadata=object_metadata(wanted),
                    **self.encryption,
                ),
                allow=frozenset({_TAKEN, *_MISSING}),
            )

    # --- reading ----------------------------------------------------------------------

    def _head(
        self, key: str, with_tags: bool = False, tag_count_hint: bool = False
    ) -> _Head | None:
        """The object's metadata, and with `with_tags` whether it is pinned.

        `tag_count_hint` skips reading the tags of an object whose HEAD reports no tags
        (`x-amz-tagging-count`): right on AWS, MinIO and SeaweedFS, and only a hint elsewhere,
        which is why the re-check before a delete always reads them.
        """
        found = self._head_object(key)
        if found is None:
            return None
        retain = False
        tagged = not tag_count_hint or int(found.get("TagCount") or 0) > 0
        if with_tags and tagged and found["Metadata"].get(MARKER) == MANAGED_BY:
            try:
                tags = self._call(
                    "get_object_tagging",
                    key,
                    lambda: self.client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"],
                    allow=_MISSING,
                )
            except ClientError:
                return None
            retain = any(t["Key"] == RETAIN and t["Value"].strip().lower() == "true" for t in tags)
        return _Head(key, found["ETag"], found["LastModified"], found["Metadata"], retain)

    def _pages(self, prefix: str) -> Iterator[tuple[str, ...]]:
        """Our keys, a page at a time; only the keys are kept, not the parsed page."""
        for page in self._page_items(prefix):
            yield tuple(key for key, _ in page if self._layout.fullmatch(key))

    def _page_items(self, prefix: str) -> Iterator[Sequence[tuple[str, int]]]:
        """(key, size) of every object under `prefix`, a page at a time."""
        token: dict[str, str] = {}
        while True:
            page = self._call(
                "list_objects_v2",
                prefix,
                functools.partial(
                    self.client.list_objects_v2,
                    Bucket=self.bucket,
                    Prefix=prefix,
                    MaxKeys=min(self.page_size, LIST_PAGE_LIMIT),
                    **token,
                ),
            )
            items = [(item["Key"], int(item.get("Size", 0))) for item in page.get("Contents", [])]
            token = {"ContinuationToken": page.get("NextContinuationToken", "")}
            more = bool(page.get("IsTruncated"))
            del page
            yield items
            if not more:
                return

    def _record(self, head: _Head) -> ContextRecord:
        record = record_from_metadata(head.metadata, head.retain)
        if self.key(record.namespace, record.function, record.content_hash) != head.key:
            raise ValueError(f"metadata does not match the key {head.key}")
        return record

    def _managed_record(self, head: _Head) -> ContextRecord:
        location = f"s3://{self.bucket}/{head.key}"
        if head.metadata.get(MARKER) != MANAGED_BY:
            raise StorageConflict(
                f"S3 store: {location} exists but was not written by build-context; it is never "
                "overwritten: remove it or choose another BUILD_CONTEXT_S3_PREFIX"
            )
        try:
            return self._record(head)
        except (KeyError, ValueError) as error:
            raise StorageConflict(
                f"S3 store: {location} has unreadable build-context metadata ({error}); "
                "delete the object so it is written again"
            ) from None

    def _stored(self, key: str, record: ContextRecord, reused: bool) -> Stored:
        storage = {
            "backend": self.backend,
            "bucket": self.bucket,
            "key": key,
            "region": self.region,
            "endpoint": self.endpoint,
        }
        return Stored(record, storage, f"s3://{self.bucket}/{key}", reused)

    # --- calls ------------------------------------------------------------------------

    def _span(self, operation: str, key: str) -> Any:
        return self.telemetry.span(
            f"s3.{operation}",
            {"aws.s3.bucket": self.bucket, "aws.s3.key": key},
            trace.SpanKind.CLIENT,
        )

    def _call(
        self,
        operation: str,
        key: str,
        call: Callable[[], T],
        allow: frozenset[str] = frozenset(),
        retry: bool = True,
    ) -> T:
        """One S3 call in a span, transient failures retried; `allow`ed codes re-raised as is."""
        attempts = 1

        def retried(attempt: int, error: BaseException) -> None:
            nonlocal attempts
            attempts = attempt + 1
            self.telemetry.retried(self.backend, attempt, error)
            log.warning(
                "storage call retried",
                extra={**self._log_fields(operation, key, error), "attempt": attempt},
            )

        with self._span(operation, key):
            try:
                return (self.retry if retry else _ONCE).call(call, _transient, retried)
            except ClientError as error:
                if _code(error) in allow:
                    raise
                raise self._failure(operation, key, error, attempts) from error
            except BotoCoreError as error:
                raise self._failure(operation, key, error, attempts) from error

    def _failure(
        self, operation: str, key: str, error: Exception, attempts: int
    ) -> BuildContextError:
        location = f"s3://{self.bucket}/{key}"
        code = _code(error) if isinstance(error, ClientError) else type(error).__name__
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StorageForbidden(
                f"S3 store: no AWS credentials for {operation} on {location}; set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or give the pod a role (docs/s3.md)"
            )
        if code in _CREDENTIALS:
            return StorageForbidden(
                f"S3 store: {self.endpoint} rejected the credentials for {operation} on "
                f"{location} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the "
                "pod's role"
            )
        if code in _FORBIDDEN:
            return StorageForbidden(
                f"S3 store: {operation} on {location} was denied ({code}); grant the function's "
                f"identity {_IAM_ACTION.get(operation, 's3:*')} on "
                f"arn:aws:s3:::{self.bucket}/{self.prefix}* (docs/s3.md lists the policy)"
            )
        if code == "NoSuchBucket":
            return StorageUnavailable(
                f"S3 store: bucket {self.bucket!r} does not exist at {self.endpoint}; create it or "
                "fix BUILD_CONTEXT_S3_BUCKET"
            )
        if code == "EntityTooLarge":
            return ContextTooLarge(
                f"S3 store: {self.endpoint} refused the archive for {location} as too large; "
                "send less source or raise the server's object size limit"
            )
        if _transient(error):
            return StorageUnavailable(
                f"S3 store: {operation} on {location} at {self.endpoint} failed after "
                f"{attempts} attempt(s) ({code}: {_describe(error)}); the request can be retried"
            )
        failure = StorageUnavailable(
            f"S3 store: {operation} on {location} at {self.endpoint} failed ({code}: "
            f"{_describe(error)}); check the S3 settings (docs/s3.md)"
        )
        failure.retryable = False
        return failure

    def _log_fields(self, operation: str, key: str, error: BaseException) -> dict[str, Any]:
        return {
            "store": self.backend,
            "operation": operation,
            "bucket": self.bucket,
            "key": key,
            "endpoint": self.endpoint,
            "error": _describe(error),
        }


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _transient(error: BaseException) -> bool:
    if isinstance(error, ClientError):
        status = _status(error)
        return _code(error) in _TRANSIENT or status >= 500 or status == 429
    return isinstance(error, (HTTPClientError, BotoConnectionError, IncompleteReadError))


def _describe(error: BaseException) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', '')} {details.get('Message', '')}".strip()
    return str(error) or type(error).__name__


def _md5(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _content_md5(request: Any, **_: Any) -> None:
    """DeleteObjects carries a Content-MD5 as well: botocore sends only a CRC32 since 1.36,
    which servers such as Ceph RGW and older MinIO refuse (`MissingContentMD5`)."""
    if isinstance(request.body, bytes) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = _md5(request.body)


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


_RECORD_FIELDS = (
    "namespace",
    "function",
    "runtime",
    "runtimeVersion",
    "contentHash",
    "archiveSha256",
    "sizeBytes",
    "createdAt",
    "expiresAt",
)


def object_metadata(record: ContextRecord) -> dict[str, str]:
    """The record as S3 user metadata: lowercase keys, US-ASCII values, within 2 KiB."""
    fields = record_fields(record)
    metadata = {MARKER: MANAGED_BY}
    metadata.update({_kebab(name): str(fields[name]) for name in _RECORD_FIELDS})
    metadata["request-id"] = quote(record.request_id[:REQUEST_ID_LIMIT], safe="")
    if record.metadata:
        extra = json.dumps(dict(record.metadata), ensure_ascii=True, separators=(",", ":"))
        used = sum(len(k) + len(v) for k, v in metadata.items())
        if used + len("metadata") + len(extra) <= METADATA_BUDGET:
            metadata["metadata"] = extra
    return metadata


def record_from_metadata(metadata: dict[str, str], retain: bool = False) -> ContextRecord:
    fields: dict[str, Any] = {name: metadata[_kebab(name)] for name in _RECORD_FIELDS}
    fields["requestId"] = unquote(metadata.get("request-id", ""))
    fields["metadata"] = json.loads(metadata.get("metadata") or "{}")
    fields["retain"] = retain
    return record_from_fields(fields)
