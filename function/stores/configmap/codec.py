"""What a context's ConfigMap holds: its name, labels, annotations and the archive, and the
record read back from its metadata."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from ...archive import Archive, image_tag
from ...boundary import is_dns_subdomain
from ...contract import OwnerReference, utc_text
from ...errors import InternalError
from ..base import MANAGED_BY, PROVENANCE_FILE, RETAIN, ContextRecord, parse_time

KEY = "context.tar.gz"
"""The one `binaryData` key: mounted at MOUNT_PATH it is the file kaniko reads."""
MOUNT_PATH = "/workspace"
APISERVER_LIMIT = 1024 * 1024
"""The apiserver rejects a ConfigMap whose data values add up to more (422, FieldValueTooLong)."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
FUNCTION_LABEL = "build-context.dev/function"
RUNTIME_LABEL = "build-context.dev/runtime"
IMAGE_TAG_LABEL = "build-context.dev/image-tag"
"""`sha256-<first 24 hex of contentHash>`: the image tag of the reply, short enough for a label."""

_A = "build-context.dev/"
CONTENT_HASH = _A + "content-hash"
ARCHIVE_SHA256 = _A + "archive-sha256"
SIZE_BYTES = _A + "size-bytes"
RUNTIME_VERSION = _A + "runtime-version"
CREATED_AT = _A + "created-at"
EXPIRES_AT = _A + "expires-at"
REQUEST_ID = _A + "request-id"
METADATA = _A + "metadata"

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


def configmap_body(
    archive: Archive, record: ContextRecord, owner: OwnerReference | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": configmap_name(record.function, record.content_hash),
        "namespace": record.namespace,
        "labels": {
            MANAGED_BY_LABEL: MANAGED_BY,
            FUNCTION_LABEL: record.function,
            RUNTIME_LABEL: record.runtime,
            IMAGE_TAG_LABEL: image_tag(record.content_hash),
        },
        "annotations": {
            CONTENT_HASH: record.content_hash,
            ARCHIVE_SHA256: record.archive_sha256,
            SIZE_BYTES: str(record.size_bytes),
            RUNTIME_VERSION: record.runtime_version,
            CREATED_AT: utc_text(record.created_at),
            EXPIRES_AT: utc_text(record.expires_at),
            REQUEST_ID: record.request_id,
            METADATA: json.dumps(dict(record.metadata), sort_keys=True, separators=(",", ":")),
        },
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


def record_from_metadata(metadata: Mapping[str, Any]) -> ContextRecord:
    """The record kept in labels and annotations (KeyError/ValueError when not ours)."""
    labels = metadata.get("labels") or {}
    notes = metadata.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        raise ValueError(f"{MANAGED_BY_LABEL} is not {MANAGED_BY!r}")
    extra = json.loads(notes.get(METADATA) or "{}")
    if not isinstance(extra, dict):
        raise ValueError(f"{METADATA} is not a JSON object")
    return ContextRecord(
        namespace=str(metadata["namespace"]),
        function=str(labels[FUNCTION_LABEL]),
        runtime=str(labels[RUNTIME_LABEL]),
        runtime_version=str(notes[RUNTIME_VERSION]),
        content_hash=str(notes[CONTENT_HASH]),
        archive_sha256=str(notes[ARCHIVE_SHA256]),
        size_bytes=int(notes[SIZE_BYTES]),
        created_at=parse_time(str(notes[CREATED_AT])),
        expires_at=parse_time(str(notes[EXPIRES_AT])),
        request_id=str(notes.get(REQUEST_ID, "")),
        metadata={str(k): str(v) for k, v in extra.items()},
        retain=str(labels.get(RETAIN, "")).lower() == "true",
    )
