"""The client, and every call on our bucket: a span, retries, typed failures (calls.py)."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config

from ...errors import ConfigurationError
from ...retry import RetryPolicy
from ...settings import Settings
from ..base import RETAIN
from ..calls import StorageCalls
from ..failures import NotFound, PreconditionFailed
from . import errors
from .codec import managed

T = TypeVar("T")
ONCE = RetryPolicy(attempts=1)
LIST_CONCURRENCY = 8
"""Objects of a listed page read (HEAD, tags) at once, on the one shared client."""


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
        max_pool_connections=settings.server_threads
        + LIST_CONCURRENCY
        + settings.cleanup_concurrency,
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


def md5(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _content_md5(request: Any, **_: Any) -> None:
    """DeleteObjects carries a Content-MD5 as well: botocore sends only a CRC32 since 1.36,
    which servers such as Ceph RGW and older MinIO refuse (`MissingContentMD5`)."""
    if isinstance(request.body, bytes) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = md5(request.body)


@dataclass(frozen=True)
class Head:
    key: str
    etag: str
    last_modified: datetime
    metadata: dict[str, str]
    retain: bool = False


@dataclass
class Bucket:
    """Our bucket and prefix on one client; the parts of the store share it."""

    client: Any
    name: str
    prefix: str
    calls: StorageCalls
    encryption: dict[str, Any]
    """ServerSideEncryption (and SSEKMSKeyId) for every object we write."""

    def __post_init__(self) -> None:
        self.client.meta.events.register(
            "before-sign.s3.DeleteObjects", _content_md5, unique_id="build-context.content-md5"
        )

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    @property
    def region(self) -> str:
        return str(self.client.meta.region_name)

    def send(self, operation: str, key: str, *, once: bool = False, **params: Any) -> Any:
        """The client method `operation` on `key` (Bucket and Key filled in), through the one
        funnel; `once` for a call that must not land late (a delete under a claim)."""
        method = getattr(self.client, operation)
        body = params.get("Body")

        def attempt() -> Any:
            if isinstance(body, io.IOBase):
                body.seek(0)  # a retry sends a streamed body again from its start
            return method(Bucket=self.name, Key=key, **params)

        return self._call(operation, key, attempt, once)

    def read(self, key: str) -> bytes:
        """The object's bytes, read within the attempt: a cut-off body is retried too."""
        data: bytes = self._call(
            "get_object",
            key,
            lambda: self.client.get_object(Bucket=self.name, Key=key)["Body"].read(),
        )
        return data

    def list_page(
        self, prefix: str, max_keys: int, token: str = "", once: bool = False
    ) -> dict[str, Any]:
        """One ListObjectsV2 page under `prefix`, continuing from `token`."""
        more = {"ContinuationToken": token} if token else {}
        page: dict[str, Any] = self._call(
            "list_objects_v2",
            prefix,
            lambda: self.client.list_objects_v2(
                Bucket=self.name, Prefix=prefix, MaxKeys=max_keys, **more
            ),
            once,
        )
        return page

    def put_new(self, key: str, body: bytes, **attributes: Any) -> bool:
        """One conditional PUT (`If-None-Match: *`); False when the key is already taken."""
        try:
            self.send(
                "put_object",
                key,
                Body=body,
                ContentMD5=md5(body),
                IfNoneMatch="*",
                **attributes,
                **self.encryption,
            )
        except PreconditionFailed:
            return False
        return True

    def delete_objects(
        self, objects: list[dict[str, str]], quiet: bool, once: bool = False
    ) -> dict[str, Any]:
        """One DeleteObjects call; its answer lists what was deleted (unless `quiet`) and
        the keys it could not delete."""
        answer: dict[str, Any] = self._call(
            "delete_objects",
            self.prefix,
            lambda: self.client.delete_objects(
                Bucket=self.name, Delete={"Objects": objects, "Quiet": quiet}
            ),
            once,
        )
        return answer

    def _call(self, operation: str, key: str, call: Callable[[], T], once: bool = False) -> T:
        """The funnel every call above goes through: a span, retries, a typed failure."""
        where = errors.Call(operation, self.name, key, self.prefix, self.endpoint)
        return self.calls.run(
            operation,
            call,
            lambda error, attempts: errors.translate(error, attempts, where),
            span=f"s3.{operation}",
            attributes={"aws.s3.bucket": self.name, "aws.s3.key": key},
            fields={"bucket": self.name, "key": key, "endpoint": self.endpoint},
            policy=ONCE if once else None,
        )

    def log_fields(self, operation: str, key: str, error: BaseException) -> dict[str, Any]:
        return {
            "store": self.calls.backend,
            "operation": operation,
            "bucket": self.name,
            "key": key,
            "endpoint": self.endpoint,
            "error": errors.BOUNDARY.describe(error),
        }

    def head_object(self, key: str) -> dict[str, Any] | None:
        """HEAD of one key, or None when it does not exist."""
        try:
            found: dict[str, Any] = self.send("head_object", key)
        except NotFound:
            return None
        return found

    def head(self, key: str, with_tags: bool = False, tag_count_hint: bool = False) -> Head | None:
        """The object's metadata, and with `with_tags` whether it is pinned.

        `tag_count_hint` skips reading the tags of an object whose HEAD reports no tags
        (`x-amz-tagging-count`): right on AWS, MinIO and SeaweedFS, and only a hint elsewhere,
        which is why the re-check before a delete always reads them.
        """
        found = self.head_object(key)
        if found is None:
            return None
        retain = False
        tagged = not tag_count_hint or int(found.get("TagCount") or 0) > 0
        if with_tags and tagged and managed(found["Metadata"]):
            try:
                tags = self.send("get_object_tagging", key)["TagSet"]
            except NotFound:
                return None
            retain = any(t["Key"] == RETAIN and t["Value"].strip().lower() == "true" for t in tags)
        return Head(key, found["ETag"], found["LastModified"], found["Metadata"], retain)
