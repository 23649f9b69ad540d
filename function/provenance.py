"""Signed provenance of a context: an in-toto Statement v1 with a SLSA Provenance v1 predicate,
in a DSSE envelope signed with the operator's key (Ed25519 or ECDSA P-256), and its check.

The check (`python -m function verify`) proves more than the signature: the archive's digests
are the statement's subjects, every file's digest is the one recorded, the tar is the canonical
one we pack, and the Dockerfile and manifests are exactly what the runtime renders from the
statement's parameters, so a context changed in the store is caught.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import __version__
from . import archive as archives
from .contract import utc_text
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
MAX_ENVELOPE_BYTES = 8 * 1024 * 1024
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
_MAX_UNPACKED_BYTES = 256 * 1024 * 1024
IMAGE_SETTINGS = ("python", "nodejs", "go_build", "go_runtime")
"""internalParameters.images: these keys, each the template of setting `<key>_image`."""


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

    function: str
    runtime: str
    runtime_version: str
    dependencies: Sequence[tuple[str, str]]
    request_id: str
    request_source: str
    lock: Mapping[str, Any] | None = None
    locked: bool = False
    """The lock pins everything installed (or nothing is installed)."""

    def external(self, files: Mapping[str, bytes]) -> dict[str, Any]:
        return {
            "function": self.function,
            "runtime": self.runtime,
            "runtimeVersion": self.runtime_version,
            "dependencies": [list(pair) for pair in self.dependencies],
            "dependenciesLocked": self.locked,
            "lock": self.lock,
            "request": {"id": self.request_id, "source": self.request_source},
            "files": file_digests(files),
        }


def internal_parameters(settings: Settings) -> dict[str, Any]:
    """The operator's image settings that shaped the Dockerfile: the check renders with them."""
    return {
        "registryMirror": settings.registry_mirror,
        "images": {name: getattr(settings, f"{name}_image") for name in IMAGE_SETTINGS},
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


@dataclass(frozen=True)
class Verified:
    statement: dict[str, Any]
    keyid: str | None
    """The key that verified the signature; None when unsigned was allowed."""


def verify(
    archive_bytes: bytes,
    envelope_bytes: bytes,
    keys: Sequence[VerifyingKey],
    allow_unsigned: bool = False,
) -> Verified:
    """Every check, in order; the first that fails raises VerificationFailed."""
    payload, signatures = _read_envelope(envelope_bytes)
    signer = _check_signature(payload, signatures, keys, allow_unsigned)
    body = _json(payload, "the statement")
    _check_statement_shape(body)
    tar = _check_subjects(archive_bytes, body["subject"])
    files = _members(tar)
    parameters = body["predicate"]["buildDefinition"]["externalParameters"]
    if file_digests(files) != parameters.get("files"):
        changed = sorted(
            set(files).symmetric_difference(parameters.get("files") or {})
            | {p for p, d in file_digests(files).items() if parameters["files"].get(p) != d}
        )
        raise VerificationFailed(
            f"the archive's files differ from the statement's digests: {', '.join(changed[:5])}"
        )
    if archives.canonical_tar(files) != tar:
        raise VerificationFailed("the tar is not the canonical one build-context packs")
    _check_rendered(files, body["predicate"]["buildDefinition"])
    return Verified(body, signer)


def _read_envelope(data: bytes) -> tuple[bytes, list[Any]]:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise VerificationFailed(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    envelope = _json(data, "the envelope")
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationFailed(f"not a DSSE envelope with payloadType {PAYLOAD_TYPE}")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        raise VerificationFailed("the envelope has no signatures list")
    try:
        payload = base64.b64decode(str(envelope.get("payload", "")), validate=True)
    except binascii.Error:
        raise VerificationFailed("the envelope's payload is not base64") from None
    return payload, signatures


def _check_signature(
    payload: bytes, signatures: list[Any], keys: Sequence[VerifyingKey], allow_unsigned: bool
) -> str | None:
    if not signatures:
        if allow_unsigned:
            return None
        raise VerificationFailed("the envelope is unsigned (the function had no signing key)")
    if not keys:
        raise VerificationFailed("no public key given to check the signature with")
    message = pae(PAYLOAD_TYPE, payload)
    for signature in signatures:
        if not isinstance(signature, dict):
            continue
        try:
            raw = base64.b64decode(str(signature.get("sig", "")), validate=True)
        except binascii.Error:
            continue
        wanted = signature.get("keyid")
        for key in keys:
            if (not wanted or wanted == key.keyid) and key.verifies(raw, message):
                return key.keyid
    ids = ", ".join(
        str(s.get("keyid"))[:16] for s in signatures if isinstance(s, dict) and s.get("keyid")
    )
    raise VerificationFailed(
        f"no signature verifies with the given public key(s) (signed by keyid {ids or 'unknown'})"
    )


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailed(f"{what} is not JSON") from None


def _check_statement_shape(body: Any) -> None:
    try:
        ok = (
            body["_type"] == STATEMENT_TYPE
            and body["predicateType"] == PREDICATE_TYPE
            and body["predicate"]["buildDefinition"]["buildType"] == BUILD_TYPE
            and isinstance(body["predicate"]["buildDefinition"]["externalParameters"], dict)
            and isinstance(body["subject"], list)
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise VerificationFailed(
            f"not an in-toto Statement v1 with a SLSA Provenance v1 predicate of {BUILD_TYPE}"
        )


def _subject(subjects: list[Any], name: str) -> str:
    for subject in subjects:
        if isinstance(subject, dict) and subject.get("name") == name:
            digest = subject.get("digest")
            if isinstance(digest, dict) and isinstance(digest.get("sha256"), str):
                return str(digest["sha256"])
    raise VerificationFailed(f"the statement has no subject {name} with a sha256 digest")


def _check_subjects(archive_bytes: bytes, subjects: list[Any]) -> bytes:
    if hashlib.sha256(archive_bytes).hexdigest() != _subject(subjects, ARCHIVE_SUBJECT):
        raise VerificationFailed(f"the archive's sha256 is not the subject {ARCHIVE_SUBJECT}'s")
    if len(archive_bytes) > MAX_ARCHIVE_BYTES:
        raise VerificationFailed(f"the archive is larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        tar = inflate.decompress(archive_bytes, _MAX_UNPACKED_BYTES)
    except zlib.error:
        raise VerificationFailed("the archive is not gzip") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise VerificationFailed("the archive is truncated or unpacks to too much")
    if hashlib.sha256(tar).hexdigest() != _subject(subjects, CONTENT_SUBJECT):
        raise VerificationFailed(f"the tar's sha256 is not the subject {CONTENT_SUBJECT}'s")
    return tar


def _members(tar: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            for member in archive:
                if member.isdir():
                    continue
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise VerificationFailed(f"the archive holds a non-file entry {member.name!r}")
                files[member.name] = handle.read()
    except tarfile.TarError:
        raise VerificationFailed("the archive is not a tar") from None
    return files


def _check_rendered(files: Mapping[str, bytes], definition: Mapping[str, Any]) -> None:
    from .runtimes import RUNTIMES

    external = definition["externalParameters"]
    internal = definition.get("internalParameters") or {}
    runtime = RUNTIMES.get(str(external.get("runtime")))
    if runtime is None or external.get("runtimeVersion") not in runtime.versions:
        raise VerificationFailed("the statement names no runtime and version we render")
    images = internal.get("images")
    if not isinstance(images, dict) or sorted(images) != sorted(IMAGE_SETTINGS):
        raise VerificationFailed(f"internalParameters.images must name {', '.join(IMAGE_SETTINGS)}")
    try:
        settings = Settings(
            registry_mirror=internal.get("registryMirror", ""),
            **{f"{name}_image": images[name] for name in IMAGE_SETTINGS},
        )
        pinned = tuple((str(n), str(s)) for n, s in external.get("dependencies") or [])
        lock = external.get("lock")
        if lock is not None and not isinstance(lock, dict):
            raise VerificationFailed("externalParameters.lock is not an object")
        sources = {p: b.decode() for p, b in files.items() if runtime.is_source(p)}
        rendered = runtime.render(external["runtimeVersion"], pinned, settings, lock, sources)
    except Exception as error:  # a tampered statement must end as a refusal, whatever it holds
        raise VerificationFailed(
            f"cannot render from the statement's parameters: {error}"
        ) from None
    for path, text in rendered.files().items():
        if files.get(path) != text.encode():
            raise VerificationFailed(
                f"{path} is not what build-context renders from the statement's parameters"
            )
