"""The OCI store, with each context's provenance envelope as a referrer artifact.

The envelope (DSSE JSON) is the one layer of an artifact manifest (`artifactType`
`application/vnd.dsse.envelope.v1+json`, empty config) whose `subject` is the context image,
tagged `<tag>.dsse`: `crane blob` (or the referrers API) reads it, and any envelope under that
tag attests the same content (the tag is the content hash). It is pushed after the context,
and again by a later identical request that finds it missing (a crash in between); cleanup
deletes it by digest right after the context, and one it cannot delete is logged (`orphaned
provenance envelope`) and harmless: listing reads only records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging

from ...archive import Archive
from ...contract import OwnerReference
from ...provenance import ENVELOPE_MEDIA_TYPE
from ..base import MANAGED_BY, ContextRecord, Deletion, Listed, StillExpired, Stored
from ..failures import StoreError
from .cleanup import ENVELOPE_SUFFIX, Handle
from .client import OCI_MANIFEST
from .image import EMPTY, EMPTY_TYPE, MANAGED
from .store import OCIStore

log = logging.getLogger("build_context.oci")

MAX_ENVELOPE_BYTES = 16 * 1024 * 1024


def envelope_manifest(envelope: bytes, subject_digest: str, subject_size: int) -> bytes:
    empty = {
        "mediaType": EMPTY_TYPE,
        "digest": "sha256:" + hashlib.sha256(EMPTY).hexdigest(),
        "size": len(EMPTY),
        "data": base64.b64encode(EMPTY).decode(),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ENVELOPE_MEDIA_TYPE,
        "config": empty,
        "layers": [
            {
                "mediaType": ENVELOPE_MEDIA_TYPE,
                "digest": "sha256:" + hashlib.sha256(envelope).hexdigest(),
                "size": len(envelope),
            }
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {MANAGED: MANAGED_BY},
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


class AttestedOCIStore(OCIStore):
    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        stored = super().put_if_absent(archive, record, owner)
        repository = str(stored.storage["repository"])
        tag = str(stored.storage["tag"]) + ENVELOPE_SUFFIX
        digest = self.call(
            "read envelope", repository, lambda: self.client.head_manifest(repository, tag)
        )
        if digest is None and archive.provenance is not None:
            envelope = archive.provenance
            subject = str(stored.storage["digest"])
            context = self.call(
                "read context", repository, lambda: self.client.get_manifest(repository, subject)
            )
            size = len(context[0]) if context else 0
            body = envelope_manifest(envelope, subject, size)
            blob = "sha256:" + hashlib.sha256(envelope).hexdigest()
            self.call(
                "push envelope",
                repository,
                lambda: self.client.upload_blob(repository, blob, envelope),
            )
            self.call(
                "push envelope",
                repository,
                lambda: self.client.put_manifest(repository, tag, body, OCI_MANIFEST),
            )
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if digest is None:
            return stored
        where = {**stored.storage, "tag": tag, "digest": digest}
        return Stored(stored.record, stored.storage, stored.context_uri, stored.reused, where)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        return self._read_layer(
            (namespace, function, content_hash),
            ENVELOPE_SUFFIX,
            ("read envelope", "read envelope"),
            lambda manifest: manifest["artifactType"] == ENVELOPE_MEDIA_TYPE,
            MAX_ENVELOPE_BYTES,
        )

    def delete(self, item: Listed[Handle], still_expired: StillExpired) -> Deletion:
        deletion = super().delete(item, still_expired)
        if deletion is Deletion.DELETED and item.handle.envelope:
            self._forget_envelope(item.handle.repository, item.handle.tag + ENVELOPE_SUFFIX)
        return deletion

    def _forget_envelope(self, repository: str, tag: str) -> None:
        try:
            digest = self.call(
                "read envelope", repository, lambda: self.client.head_manifest(repository, tag)
            )
            if digest is not None:
                self.call(
                    "delete envelope",
                    repository,
                    lambda: self.client.delete_manifest(repository, digest),
                )
        except StoreError as error:
            log.warning(
                "orphaned provenance envelope",
                extra={"repository": repository, "tag": tag, "error": error.message},
            )
