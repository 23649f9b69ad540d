"""The S3 store: a facade over the bucket's calls, the codec, the claims, upload and delete."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

from ...archive import Archive
from ...contract import OwnerReference
from ...errors import StorageConflict, StorageUnavailable
from ...retry import RetryPolicy
from ...settings import Settings
from ...telemetry import NOOP, Telemetry
from ..base import ContextRecord, Deletion, Listed, Outcomes, StillExpired, Store, Stored
from ..calls import StorageCalls
from ..failures import NotFound, PreconditionFailed, StoreError, Unavailable
from . import errors
from .bucket import LIST_CONCURRENCY, Bucket, Head, s3_client
from .claims import BATCH_LIMIT, CLAIM_TIMES, Claims, ClaimTimes
from .codec import Layout, managed, object_metadata
from .delete import Deleter
from .upload import ARCHIVE_TYPE, Uploader

log = logging.getLogger("build_context.s3")

LIST_PAGE_LIMIT = 100
"""Keys per ListObjectsV2 page at most: parsing a page costs about 3.5 KB per key."""
_RACES = 8
"""How often a put re-reads after losing a race (a concurrent upload, refresh or delete)."""


class S3Store(Store[Head]):
    setting_names = (
        "s3_bucket",
        "s3_prefix",
        "s3_endpoint_url",
        "s3_region",
        "s3_force_path_style",
        "s3_sse",
        "s3_sse_kms_key_id",
        "s3_multipart_threshold_bytes",
    )
    docs_page = "docs/s3.md"
    backend = "s3"
    lists_by_function = True  # keys in lexical order: a function's keys share its prefix

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
        claim_times: ClaimTimes = CLAIM_TIMES,
        delete_batch_limit: int = BATCH_LIMIT,
        cleanup_concurrency: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.page_size = page_size
        encryption: dict[str, Any] = {}
        if sse:
            encryption["ServerSideEncryption"] = sse
        if sse == "aws:kms" and sse_kms_key_id:
            encryption["SSEKMSKeyId"] = sse_kms_key_id
        calls = StorageCalls(
            self.backend, errors.BOUNDARY, telemetry, retry or RetryPolicy(), sleep
        )
        self.objects = Bucket(client, bucket, prefix, calls, encryption)
        self.layout = Layout(prefix)
        self.claims = Claims(self.objects, claim_times, sleep, monotonic)
        self.uploader = Uploader(self.objects, multipart_threshold)
        self.deleter = Deleter(
            self.objects, self.claims, self.layout, delete_batch_limit, cleanup_concurrency
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        telemetry: Telemetry = NOOP,
        session: boto3.session.Session | None = None,
        **parts: Any,
    ) -> S3Store:
        """`parts` are the constructor's keyword arguments not taken from settings (tests)."""
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
            cleanup_concurrency=settings.cleanup_concurrency,
            **parts,
        )

    @property
    def endpoint(self) -> str:
        return self.objects.endpoint

    @property
    def region(self) -> str:
        return self.objects.region

    def key(self, namespace: str, function: str, content_hash: str) -> str:
        return self.layout.key(namespace, function, content_hash)

    def check(self) -> None:
        """A missing bucket or no credentials stop start-up; anything else only warns.

        Access can be granted and endpoints can come back after the function started; each
        request then answers StorageForbidden or a retryable StorageUnavailable.
        """
        try:
            self.objects.list_page(self.prefix, 1, once=True)
        except StoreError as failure:
            problem = errors.startup_problem(failure, self.bucket, self.endpoint)
            if problem is not None:
                raise problem from None
            log.warning(
                "S3 store: endpoint not reachable at start-up; requests will retry"
                if isinstance(failure, Unavailable) and failure.retryable
                else "S3 store: start-up probe refused; requests will fail until it is fixed",
                extra=self.objects.log_fields("list_objects_v2", self.prefix, failure),
            )

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        """Upload once; a reuse answers only after the object showed the wanted expiry, no
        cleanup claimed it since, and it was still there after that (docs/s3.md, Races)."""
        key = self.key(record.namespace, record.function, record.content_hash)
        return self._put(key, archive, record, self.objects.head(key))

    def _put(
        self, key: str, archive: Archive, record: ContextRecord, current: Head | None
    ) -> Stored:
        """`put_if_absent` from a HEAD of `key` already taken (`current`); every later round
        reads it again."""
        unclaimed = False
        for attempt in range(_RACES):
            if attempt:
                current = self.objects.head(key)
            if current is None:
                if self.uploader.upload(key, archive, record):
                    return self._stored(key, record, reused=False)
                unclaimed = False
                continue
            existing = self._managed_record(current)
            wanted = existing.refreshed(record.expires_at)
            if wanted != existing:
                self._refresh(current, wanted)
                unclaimed = False
            elif unclaimed:
                return self._stored(key, existing, reused=True)
            else:
                self.claims.wait_while_claimed(key)
                unclaimed = True
        raise StorageUnavailable(
            f"S3 store: s3://{self.bucket}/{key} kept changing under concurrent writers; "
            "the request can be retried"
        )

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        key = self.key(namespace, function, content_hash)
        try:
            return self.objects.read(key)
        except NotFound:
            raise KeyError((namespace, function, content_hash)) from None

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[Head]]:
        """Page by page; the objects of a page are read (HEAD, tags when tagged) as many at
        a time as cleanup deletes them (BUILD_CONTEXT_CLEANUP_CONCURRENCY)."""
        prefixes = (
            [self.prefix]
            if namespaces is None
            else [f"{self.prefix}{ns}/" for ns in sorted(namespaces)]
        )
        return self._read(prefixes, self.deleter.concurrency)

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        """The function's prefix only; each object read as `list` does."""
        for listed in self._read([f"{self.prefix}{namespace}/{function}/"], LIST_CONCURRENCY):
            yield listed.record

    def function_sizes(self, namespace: str, function: str) -> Iterator[tuple[str, int]]:
        """From the listing alone: no object is read. An object under our layout that is not
        ours counts too, which only makes the caps look closer (then records are read)."""
        for page in self._page_items(f"{self.prefix}{namespace}/{function}/"):
            for key, size in page:
                if content_hash := self.layout.content_hash(key):
                    yield content_hash, size

    def delete(self, item: Listed[Head], still_expired: StillExpired) -> Deletion:
        return self.deleter.delete(item, still_expired)

    def delete_many(self, items: Sequence[Listed[Head]], still_expired: StillExpired) -> Outcomes:
        return self.deleter.delete_many(items, still_expired)

    def close(self) -> None:
        self.client.close()

    # --- the steps ------------------------------------------------------------------------

    def _read(self, prefixes: Sequence[str], workers: int) -> Iterator[Listed[Head]]:
        with ThreadPoolExecutor(workers, thread_name_prefix="s3-list") as pool:
            for prefix in prefixes:
                for keys in self._pages(prefix):
                    for head in pool.map(self._head_for_listing, keys):
                        if head is not None and (listed := self._listed(head)) is not None:
                            yield listed

    def _head_for_listing(self, key: str) -> Head | None:
        return self.objects.head(key, with_tags=True, tag_count_hint=True)

    def _listed(self, head: Head) -> Listed[Head] | None:
        if not managed(head.metadata):
            return None
        try:
            return Listed(self.layout.record(head.key, head.metadata, head.retain), head)
        except (KeyError, ValueError) as error:
            log.warning(
                "S3 store: skipping an object with unreadable metadata",
                extra=self.objects.log_fields("head_object", head.key, error),
            )
            return None

    def _pages(self, prefix: str) -> Iterator[tuple[str, ...]]:
        """Our keys, a page at a time; only the keys are kept, not the parsed page."""
        for page in self._page_items(prefix):
            yield tuple(key for key, _ in page if self.layout.matches(key))

    def _page_items(self, prefix: str) -> Iterator[Sequence[tuple[str, int]]]:
        """(key, size) of every object under `prefix`, a page at a time."""
        token = ""
        while True:
            page = self.objects.list_page(prefix, min(self.page_size, LIST_PAGE_LIMIT), token)
            items = [(item["Key"], int(item.get("Size", 0))) for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken", "")
            more = bool(page.get("IsTruncated"))
            del page
            yield items
            if not more:
                return

    def _refresh(self, current: Head, wanted: ContextRecord) -> None:
        """Copy the object onto itself with the later expiry, unless it changed since `current`.

        The caller re-reads the object either way: that confirms the new expiry, and finds an
        object that cleanup deleted meanwhile (which is then uploaded again).
        """
        with contextlib.suppress(PreconditionFailed, NotFound):
            self.objects.send(
                "copy_object",
                current.key,
                CopySource={"Bucket": self.bucket, "Key": current.key},
                CopySourceIfUnmodifiedSince=current.last_modified,
                MetadataDirective="REPLACE",
                ContentType=ARCHIVE_TYPE,
                Metadata=object_metadata(wanted),
                **self.objects.encryption,
            )

    def _managed_record(self, head: Head) -> ContextRecord:
        location = f"s3://{self.bucket}/{head.key}"
        if not managed(head.metadata):
            raise StorageConflict(
                f"S3 store: {location} exists but was not written by build-context; it is never "
                "overwritten: remove it or choose another BUILD_CONTEXT_S3_PREFIX"
            )
        try:
            return self.layout.record(head.key, head.metadata, head.retain)
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
            "region": self.objects.region,
            "endpoint": self.endpoint,
        }
        return Stored(record, storage, f"s3://{self.bucket}/{key}", reused)
