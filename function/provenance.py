"""Signed provenance of a context: an in-toto Statement v1 with a SLSA Provenance v1 predicate,
in a DSSE envelope signed with the operator's key (Ed25519 or ECDSA P-256).

Its check, `python -m function verify`, is function.verification: it proves more than the
signature (the archive is the expected one, its digests are the statement's subjects, every
file's digest is the one recorded, the tar is the canonical one we pack, and the Dockerfile and
manifests are exactly what the runtime renders from the statement's parameters).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import __version__
from . import archive as archives
from . import record as records
from .contract import utc_text
from .runtimes import IMAGES
from .settings import Settings
from .signing import SigningKey, VerificationFailed, VerifyingKey, keyid, load_public_keys

__all__ = ["SigningKey", "VerificationFailed", "VerifyingKey", "keyid", "load_public_keys"]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
"""The media type of the envelope itself, as the stores label it (S3 object, OCI artifact)."""
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://build-context.dev/provenance/context/v1"
"""Ours, versioned: v1 is the parameters below; a change in their meaning is a new version."""
BUILDER_ID = "https://build-context.dev/builder/build-context"
ARCHIVE_SUBJECT = "context.tar.gz"
CONTENT_SUBJECT = "context.tar"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def file_digests(files: Mapping[str, bytes]) -> dict[str, dict[str, str]]:
    return {path: {"sha256": hashlib.sha256(files[path]).hexdigest()} for path in sorted(files)}


def base_images(dockerfile: str) -> list[str]:
    """The FROM images of a Dockerfile we rendered (never from the request)."""
    return re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)


@dataclass(frozen=True)
class BuildParameters:
    """What the context is made from: enough to render its Dockerfile and manifests again."""

    recorded: Mapping[str, Any]
    """The request's part of the context record (`ValidRequest.recorded`): its attested
    fields (function.record) are parameters, under their wire names."""
    dependencies: Sequence[tuple[str, str]]
    request_id: str
    request_source: str
    lock: Mapping[str, Any] | None = None
    locked: bool = False
    """The lock pins everything installed (or nothing is installed)."""

    def external(self, files: Mapping[str, bytes]) -> dict[str, Any]:
        return {
            **records.attested(self.recorded),
            "dependencies": [list(pair) for pair in self.dependencies],
            "dependenciesLocked": self.locked,
            "lock": self.lock,
            "request": {"id": self.request_id, "source": self.request_source},
            "files": file_digests(files),
        }


def internal_parameters(settings: Settings) -> dict[str, Any]:
    """The operator's image settings that shaped the Dockerfile, the check renders with them:
    `images` holds every runtime's base images (runtimes.IMAGES), each template by its key."""
    return {
        "registryMirror": settings.registry_mirror,
        "images": {image.key: settings.template(image) for image in IMAGES},
    }


def statement(
    archive: archives.Archive,
    files: Mapping[str, bytes],
    parameters: BuildParameters,
    internal: Mapping[str, Any],
    dockerfile: str,
    started: datetime,
    finished: datetime,
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": ARCHIVE_SUBJECT, "digest": {"sha256": archive.archive_sha256}},
            {"name": CONTENT_SUBJECT, "digest": {"sha256": archive.content_hash}},
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": parameters.external(files),
                "internalParameters": dict(internal),
                "resolvedDependencies": [
                    {"uri": f"docker://{image}", "name": "base image"}
                    for image in base_images(dockerfile)
                ],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"build-context": __version__}},
                "metadata": {
                    "invocationId": parameters.request_id,
                    "startedOn": utc_text(started),
                    "finishedOn": utc_text(finished),
                },
            },
        },
    }


def envelope(body: Mapping[str, Any], key: SigningKey | None) -> bytes:
    """The DSSE envelope as JSON bytes; without a key it carries no signature (unsigned mode)."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    signatures = (
        [
            {
                "keyid": key.keyid,
                "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode(),
            }
        ]
        if key
        else []
    )
    return json.dumps(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": signatures,
        },
        indent=2,
    ).encode()


def signer_keyids(envelope: bytes) -> list[str]:
    """The keyids an envelope's signatures name (not verified: for the reply only)."""
    try:
        signatures = json.loads(envelope).get("signatures") or []
        return [str(s["keyid"]) for s in signatures if isinstance(s, dict) and s.get("keyid")]
    except (ValueError, AttributeError, TypeError):
        return []
