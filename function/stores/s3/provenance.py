"""The S3 store, with each context's provenance envelope as an object beside its archive:
`<prefix><namespace>/<function>/<contentHash>.dsse.json` next to `….tar.gz`.

The envelope of a new context is written put-if-absent before the archive, so a context never
appears without it; any envelope under that key attests the same content (the key is the
content hash), so a concurrent writer's envelope is as good as ours. Cleanup deletes the
envelope right after the archive; one that fails is logged (`orphaned provenance envelope`) and
harmless: listing reads only archives, and the next identical context reuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ...archive import Archive
from ...contract import OwnerReference
from ...provenance import ENVELOPE_MEDIA_TYPE
from ..base import ContextRecord, Deletion, Listed, Outcomes, StillExpired, Stored
from ..failures import NotFound, StoreError
from .bucket import Head
from .codec import SUFFIX
from .store import S3Store

log = logging.getLogger("build_context.s3")

ENVELOPE_SUFFIX = ".dsse.json"
_BATCH = 1000
"""Keys per DeleteObjects call: the S3 limit."""


def envelope_key(archive_key: str) -> str:
    return archive_key.removesuffix(SUFFIX) + ENVELOPE_SUFFIX


class AttestedS3Store(S3Store):
    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        key = self.key(record.namespace, record.function, record.content_hash)
        # A stored context already has its envelope: only a new one writes it (first). The
        # context's put starts from this same HEAD (one read fewer per request).
        current = self.objects.head(key)
        written = (
            archive.provenance is not None
            and current is None
            and self.objects.put_new(
                envelope_key(key), archive.provenance, ContentType=ENVELOPE_MEDIA_TYPE
            )
        )
        try:
            stored = self._put(key, archive, record, current)
        except BaseException:
            if written:
                self._forget_envelope(envelope_key(key))
            raise
        where = {**stored.storage, "key": envelope_key(str(stored.storage["key"]))}
        return Stored(stored.record, stored.storage, stored.context_uri, stored.reused, where)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        key = envelope_key(self.key(namespace, function, content_hash))
        try:
            return self.objects.read(key)
        except NotFound:
            raise KeyError((namespace, function, content_hash)) from None

    def delete(self, item: Listed[Head], still_expired: StillExpired) -> Deletion:
        deletion = super().delete(item, still_expired)
        if deletion is Deletion.DELETED:
            self._forget_envelope(envelope_key(item.handle.key))
        return deletion

    def delete_many(self, items: Sequence[Listed[Head]], still_expired: StillExpired) -> Outcomes:
        """The archives as the S3 store deletes them, then their envelopes in DeleteObjects
        batches (one call per 1000, like the archives)."""
        outcomes = super().delete_many(items, still_expired)
        keys = [
            envelope_key(item.handle.key)
            for item, outcome in zip(items, outcomes, strict=True)
            if outcome is Deletion.DELETED
        ]
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            try:
                answer = self.objects.delete_objects([{"Key": k} for k in batch], quiet=True)
                failed = [str(e.get("Key")) for e in answer.get("Errors", [])]
            except StoreError:
                failed = batch
            for key in failed:
                log.warning(
                    "orphaned provenance envelope", extra={"bucket": self.bucket, "key": key}
                )
        return outcomes

    def _forget_envelope(self, key: str) -> None:
        try:
            self.objects.send("delete_object", key)
        except StoreError as error:
            log.warning(
                "orphaned provenance envelope",
                extra={"bucket": self.bucket, "key": key, "error": str(error)[:200]},
            )
