"""The record as S3 user metadata, and the key layout `<prefix><namespace>/<function>/<hash>.tar.gz`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from ..base import MANAGED_BY, ContextRecord, record_fields, record_from_fields

SUFFIX = ".tar.gz"
MARKER = "managed-by"
METADATA_BUDGET = 2000
"""AWS allows 2 KiB of user metadata; the request's own metadata is left out beyond this."""
REQUEST_ID_LIMIT = 256

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


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


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


def record_from_metadata(metadata: Mapping[str, str], retain: bool = False) -> ContextRecord:
    """KeyError or ValueError when the metadata is not a whole record."""
    fields: dict[str, Any] = {name: metadata[_kebab(name)] for name in _RECORD_FIELDS}
    fields["requestId"] = unquote(metadata.get("request-id", ""))
    fields["metadata"] = json.loads(metadata.get("metadata") or "{}")
    fields["retain"] = retain
    return record_from_fields(fields)


def managed(metadata: Mapping[str, str]) -> bool:
    return metadata.get(MARKER) == MANAGED_BY


class Layout:
    """Where a context's object lives under `prefix`, and which keys are ours."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pattern = re.compile(
            re.escape(prefix) + r"([a-z0-9-]+)/([a-z0-9-]+)/([0-9a-f]{64})" + re.escape(SUFFIX)
        )

    def key(self, namespace: str, function: str, content_hash: str) -> str:
        return f"{self.prefix}{namespace}/{function}/{content_hash}{SUFFIX}"

    def matches(self, key: str) -> bool:
        return self._pattern.fullmatch(key) is not None

    def content_hash(self, key: str) -> str | None:
        """The content hash a key of ours names; None for any other key."""
        found = self._pattern.fullmatch(key)
        return found.group(3) if found else None

    def record(self, key: str, metadata: Mapping[str, str], retain: bool) -> ContextRecord:
        """The record of the object at `key`; ValueError when it names another key."""
        record = record_from_metadata(metadata, retain)
        if self.key(record.namespace, record.function, record.content_hash) != key:
            raise ValueError(f"metadata does not match the key {key}")
        return record
