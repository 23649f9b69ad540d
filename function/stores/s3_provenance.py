"""The S3 store, with each context's provenance envelope as an object beside its archive:
`<prefix><namespace>/<function>/<contentHash>.dsse.json` next to `….tar.gz`.

The envelope of a new context is written put-if-absent before the archive, so a context never
appears without it; any envelope under that key attests the same content (the key is the content hash), so a
concurrent writer's envelope is as good as ours. Cleanup deletes the envelope right after the
archive; one that fails is logged (`orphaned provenance envelope`) and harmless: listing reads
only archives, and the next identical context reuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..archive import Archive
from ..contract import OwnerReference
from .base import ContextRecord, Listed, Stored
from .s3 import _MISSING, _TAKEN, SUFFIX, S3Store

log = logging.getLogger("build_context.s3")

ENVELOPE_SUFFIX = ".dsse.json"
ENVELOPE_TYPE = "application/vnd.dsse.envelope.v1+json"


def envelope_key(archive_key: str) -> str:
    return archive_key.removesuffix(SUFFIX) + ENVELOPE_SUFFIX


class AttestedS3Store(S3Store):
    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        key = self.key(record.namespace, record.function, record.content_hash)
        # A stored context already has its envelope: only a new one writes it (first).
        written = (
            archive.provenance is not None
            and self._head_object(key) is None
            and self._put_envelope(envelope_key(key), archive.provenance)
        )
        try:
            stored = super().put_if_absent(archive, record, owner)
        except BaseException:
            if written:
                self._forget_envelope(envelope_key(key))
            raise
        return self._with_envelope(stored)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        key = envelope_key(self.key(namespace, function, content_hash))
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

    def delete(self, item: Listed, still_expired: Callable[[ContextRecord], bool]) -> bool:
        deleted = super().delete(item, still_expired)
        if deleted:
            self._forget_envelope(envelope_key(item.handle.key))
        return deleted

    def delete_many(
        self, items: Sequence[Listed], still_expired: Callable[[ContextRecord], bool]
    ) -> Sequence[bool | Exception]:
        outcomes = super().delete_many(items, still_expired)
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is True:
                self._forget_envelope(envelope_key(item.handle.key))
        return outcomes

    def _with_envelope(self, stored: Stored) -> Stored:
        where = {**stored.storage, "key": envelope_key(str(stored.storage["key"]))}
        return Stored(stored.record, stored.storage, stored.context_uri, stored.reused, where)

    def _put_envelope(self, key: str, envelope: bytes) -> bool:
        """True when this call wrote it; False when one was there already."""
        try:
            self._call(
                "put_object",
                key,
                lambda: self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=envelope,
                    ContentType=ENVELOPE_TYPE,
                    IfNoneMatch="*",
                    **self.encryption,
                ),
                allow=frozenset({_TAKEN}),
            )
        except ClientError:
            return False
        return True

    def _forget_envelope(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "orphaned provenance envelope",
                extra={"bucket": self.bucket, "key": key, "error": _describe(error)},
            )


def _describe(error: Any) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"
