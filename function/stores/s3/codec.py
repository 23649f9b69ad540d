"""The record as S3 user metadata, and the key layout `<prefix><namespace>/<function>/<hash>.tar.gz`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from ... import record as records
from ...record import ContextRecord
from ..base import MANAGED_BY

SUFFIX = ".tar.gz"
MARKER = "managed-by"
METADATA_BUDGET = 2000
"""AWS allows 2 KiB of user metadata (keys and values); what does not fit is left out."""


def object_metadata(record: ContextRecord) -> dict[str, str]:
    """The record as S3 user metadata. The key rule: each field's kebab-case name (S3 returns
    keys in lowercase); values US-ASCII, free text percent-encoded; in table order within
    `METADATA_BUDGET`, an optional field that does not fit, or holds its default, left out
    (reading gives the default back: the reply then says what is stored)."""
    metadata = {MARKER: MANAGED_BY}
    used = len(MARKER) + len(MANAGED_BY)
    for field, text in records.text_fields(record):
        value = quote(text, safe="") if field.wire.codec.free_text else text
        if not field.required and (
            getattr(record, field.attr) == field.default
            or used + len(field.kebab) + len(value) > METADATA_BUDGET
        ):
            continue
        metadata[field.kebab] = value
        used += len(field.kebab) + len(value)
    return metadata


def record_from_metadata(metadata: Mapping[str, str], retain: bool = False) -> ContextRecord:
    """KeyError or ValueError when the metadata is not a whole record."""

    def lookup(field: records.RecordField) -> str | None:
        text = metadata.get(field.kebab)
        return unquote(text) if text is not None and field.wire.codec.free_text else text

    return records.from_text(lookup, retain=retain)


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
