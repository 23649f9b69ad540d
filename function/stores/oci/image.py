"""The two manifests of a context: the reproducible context image and its record (docs/oci.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ...archive import Archive
from ...contract import utc_text
from ..base import MANAGED_BY, ContextRecord, parse_time
from .client import OCI_MANIFEST

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
RECORD_TYPE = "application/vnd.build-context.record.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()
ANNOTATION = "dev.build-context."
MANAGED = ANNOTATION + "managed-by"
REQUEST_ID_LIMIT = 256


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _descriptor(media_type: str, blob: bytes, **extra: Any) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(blob), **extra}


@dataclass(frozen=True)
class ContextImage:
    """The reproducible part: config and manifest bytes of one context."""

    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @classmethod
    def of(cls, archive: Archive, record: ContextRecord) -> ContextImage:
        assert (archive.content_hash, archive.archive_sha256) == (
            record.content_hash,
            record.archive_sha256,
        )
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: ContextRecord) -> ContextImage:
        """Everything in the image is in the record: cleanup can rebuild it to put it back."""
        config = _canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{record.content_hash}"]},
            }
        )
        annotations = {
            MANAGED: MANAGED_BY,
            ANNOTATION + "namespace": record.namespace,
            ANNOTATION + "function": record.function,
            ANNOTATION + "runtime": record.runtime,
            ANNOTATION + "runtime-version": record.runtime_version,
            ANNOTATION + "content-hash": record.content_hash,
            ANNOTATION + "archive-sha256": record.archive_sha256,
            "org.opencontainers.image.title": f"{record.function} build context",
        }
        layer = {
            "mediaType": LAYER_TYPE,
            "digest": f"sha256:{record.archive_sha256}",
            "size": record.size_bytes,
            "annotations": {"org.opencontainers.image.title": "context.tar.gz"},
        }
        manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor(CONFIG_TYPE, config),
                "layers": [layer],
                "annotations": annotations,
            }
        )
        return cls(config, manifest)


def record_manifest(record: ContextRecord, context: ContextImage) -> bytes:
    empty = _descriptor(EMPTY_TYPE, EMPTY, data=base64.b64encode(EMPTY).decode())
    annotations = {
        MANAGED: MANAGED_BY,
        ANNOTATION + "namespace": record.namespace,
        ANNOTATION + "function": record.function,
        ANNOTATION + "runtime": record.runtime,
        ANNOTATION + "runtime-version": record.runtime_version,
        ANNOTATION + "content-hash": record.content_hash,
        ANNOTATION + "archive-sha256": record.archive_sha256,
        ANNOTATION + "size-bytes": str(record.size_bytes),
        ANNOTATION + "created-at": utc_text(record.created_at),
        ANNOTATION + "expires-at": utc_text(record.expires_at),
        ANNOTATION + "request-id": record.request_id[:REQUEST_ID_LIMIT],
        ANNOTATION + "metadata": json.dumps(dict(record.metadata), sort_keys=True),
    }
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": RECORD_TYPE,
            "config": empty,
            "layers": [empty],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": context.digest,
                "size": len(context.manifest),
            },
            "annotations": annotations,
        }
    )


def record_from_manifest(data: bytes) -> tuple[ContextRecord, str]:
    """The record and the digest of its subject (the context image); ValueError if not ours."""
    try:
        manifest = json.loads(data)
        notes = manifest["annotations"]
        if manifest.get("artifactType") != RECORD_TYPE or notes.get(MANAGED) != MANAGED_BY:
            raise ValueError("not a build-context record")
        metadata = json.loads(notes[ANNOTATION + "metadata"])
        record = ContextRecord(
            namespace=str(notes[ANNOTATION + "namespace"]),
            function=str(notes[ANNOTATION + "function"]),
            runtime=str(notes[ANNOTATION + "runtime"]),
            runtime_version=str(notes[ANNOTATION + "runtime-version"]),
            content_hash=str(notes[ANNOTATION + "content-hash"]),
            archive_sha256=str(notes[ANNOTATION + "archive-sha256"]),
            size_bytes=int(notes[ANNOTATION + "size-bytes"]),
            created_at=parse_time(str(notes[ANNOTATION + "created-at"])),
            expires_at=parse_time(str(notes[ANNOTATION + "expires-at"])),
            request_id=str(notes.get(ANNOTATION + "request-id", "")),
            metadata={str(k): str(v) for k, v in dict(metadata).items()},
        )
        return record, str(manifest["subject"]["digest"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"unreadable record: {error}") from None
