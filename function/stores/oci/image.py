"""The two manifests of a context: the reproducible context image and its record (docs/oci.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ... import record as records
from ...archive import Archive
from ...record import MAPPING, ContextRecord, RecordField
from ..base import MANAGED_BY
from .client import OCI_MANIFEST

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
RECORD_TYPE = "application/vnd.build-context.record.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()
ANNOTATION = "dev.build-context."
MANAGED = ANNOTATION + "managed-by"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _descriptor(media_type: str, blob: bytes, **extra: Any) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(blob), **extra}


IMAGE_FIELDS = (
    "namespace",
    "function",
    "runtime",
    "runtime_version",
    "content_hash",
    "archive_sha256",
)
"""What the reproducible context image carries of the record: what is the same for every
request of this content (the rest lives in the record manifest)."""


def _annotations(record: ContextRecord, only: tuple[str, ...] | None = None) -> dict[str, str]:
    """The key rule: `ANNOTATION` + each field's kebab-case name; `only` these attributes."""
    notes = {MANAGED: MANAGED_BY}
    for field, text in records.text_fields(record):
        if only is None or field.attr in only:
            notes[ANNOTATION + field.kebab] = _spaced(record, field, text)
    return notes


def _spaced(record: ContextRecord, field: RecordField, text: str) -> str:
    """A JSON object as this store has always written it, with spaces after `,` and `:`, so
    that a record is byte for byte what earlier versions wrote (either form reads back)."""
    if field.wire.codec is not MAPPING:
        return text
    return json.dumps(dict(getattr(record, field.attr)), sort_keys=True)


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
            **_annotations(record, IMAGE_FIELDS),
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
    annotations = _annotations(record)
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
        # A pin is a tag of its own (cleanup.py), never part of the record.
        record = records.from_text(lambda field: notes.get(ANNOTATION + field.kebab), retain=False)
        return record, str(manifest["subject"]["digest"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"unreadable record: {error}") from None
