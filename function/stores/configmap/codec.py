"""What a context's ConfigMap holds: its name, labels, annotations and the archive, and the
record read back from its metadata."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Any

from ... import record as records
from ...archive import Archive, image_tag
from ...boundary import is_dns_subdomain
from ...contract import OwnerReference
from ...errors import InternalError
from ...record import ContextRecord, Place, RecordField
from ..base import MANAGED_BY, PROVENANCE_FILE

KEY = "context.tar.gz"
"""The one `binaryData` key: mounted at MOUNT_PATH it is the file kaniko reads."""
MOUNT_PATH = "/workspace"
APISERVER_LIMIT = 1024 * 1024
"""The apiserver rejects a ConfigMap whose data values add up to more (422, FieldValueTooLong)."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PREFIX = "build-context.dev/"
"""The key rule: a record field is the label or annotation `PREFIX` + its kebab-case name (a
label when the field is one, `Place.LABEL`); the namespace is the object's own."""


def _key(field: RecordField) -> str:
    return PREFIX + field.kebab


def key(attr: str) -> str:
    """The label or annotation that holds the record's attribute `attr`."""
    return _key(records.field(attr))


FUNCTION_LABEL = key("function")
SIZE_BYTES = key("size_bytes")
"""What the capacity guard sums from a metadata-only list."""
IMAGE_TAG_LABEL = PREFIX + "image-tag"
"""`sha256-<first 24 hex of contentHash>`: the image tag of the reply, short enough for a label."""

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
REQUIRED_VERBS = {
    "create": ("create", "get", "list", "patch"),
    "cleanup": ("delete", "get", "list"),
}
"""What each handler calls on `configmaps` in its namespaces; the Roles grant exactly this."""


def configmap_name(function: str, content_hash: str) -> str:
    """`<function>-build-context-<contentHash>`: at most 63 + 15 + 64 = 142 of the 253 allowed."""
    name = f"{function}-build-context-{content_hash}"
    if not is_dns_subdomain(name):
        raise InternalError(f"cannot name a ConfigMap after function {function!r}")
    return name


def context_uri() -> str:
    return f"tar://{MOUNT_PATH}/{KEY}"


def _slots(record: ContextRecord) -> Iterator[tuple[str, RecordField, str]]:
    """("labels" or "annotations", field, text) of every record field kept in the metadata."""
    for field, text in records.text_fields(record):
        if field.attr != "namespace":
            yield ("labels" if field.wire.place is Place.LABEL else "annotations"), field, text


def configmap_body(
    archive: Archive, record: ContextRecord, owner: OwnerReference | None
) -> dict[str, Any]:
    kept: dict[str, dict[str, str]] = {"labels": {MANAGED_BY_LABEL: MANAGED_BY}, "annotations": {}}
    for where, field, text in _slots(record):
        kept[where][_key(field)] = text
    kept["labels"][IMAGE_TAG_LABEL] = image_tag(record.content_hash)
    metadata: dict[str, Any] = {
        "name": configmap_name(record.function, record.content_hash),
        "namespace": record.namespace,
        **kept,
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner.wire()]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "immutable": True,
        "binaryData": {
            KEY: base64.b64encode(archive.data).decode("ascii"),
            # The provenance envelope, mounted beside the archive (docs/deploy.md).
            **(
                {PROVENANCE_FILE: base64.b64encode(archive.provenance).decode("ascii")}
                if archive.provenance is not None
                else {}
            ),
        },
    }


def annotation_changes(current: ContextRecord, wanted: ContextRecord) -> dict[str, str]:
    """The annotations that make the stored `current` read back as `wanted` (a refresh: the
    expiry); labels never change, the ConfigMap is found by them."""
    return {
        _key(field): text
        for where, field, text in _slots(wanted)
        if where == "annotations" and getattr(current, field.attr) != getattr(wanted, field.attr)
    }


def record_from_metadata(metadata: Mapping[str, Any]) -> ContextRecord:
    """The record kept in labels and annotations (KeyError/ValueError when not ours)."""
    labels = metadata.get("labels") or {}
    notes = metadata.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise ValueError(f"{MANAGED_BY_LABEL} is not {MANAGED_BY!r}")

    def lookup(field: RecordField) -> str | None:
        if field.attr == "namespace":
            return str(metadata["namespace"])
        found = (notes if field.wire.place is Place.TEXT else labels).get(_key(field))
        return None if found is None else str(found)

    return records.from_text(lookup)
