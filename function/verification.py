"""The builder's gate (`python -m function verify`): a context is built only if it is the one
the builder expects, signed by the operator's key, safe to unpack and exactly what
build-context makes from its recorded parameters.

Every input is hostile here (whoever can write to the store chose it): each check is bounded,
and each failure is one class of VerificationFailed whose `exit_code` the command returns
(docs/deploy.md, Exit codes of verify). The checks run in this order, the cheapest and most
telling first: the archive is the expected one (pinned digest), the envelope is well formed,
its signature verifies, the statement is well formed and names what was expected, the archive
is its subject, unpacks within bounds, holds only plain, unambiguous entries, and is byte for
byte the canonical tar of the recorded files, with the Dockerfile and manifests rendered again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import archive as archives
from . import unpack
from .boundary import dns_label_problem, quote
from .provenance import (
    ARCHIVE_SUBJECT,
    BUILD_TYPE,
    CONTENT_SUBJECT,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    file_digests,
    pae,
)
from .refusals import (
    ContentMismatch,
    MalformedArchive,
    MalformedEnvelope,
    MalformedStatement,
    NotExpected,
    SignatureRefused,
    UnusableInput,
    VerificationFailed,
)
from .runtimes import IMAGES, RUNTIMES, Runtime
from .settings import Settings
from .signing import VerifyingKey

MAX_ENVELOPE_BYTES = 8 * 1024 * 1024
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
SHA256 = re.compile(r"[0-9a-f]{64}")
Files = Mapping[str, bytes]


@dataclass(frozen=True)
class Expected:
    """What the builder takes from the `buildcontext.created` reply: `archiveSha256`,
    `contentHash`, `lambdaFunction`. A swapped context, however validly signed, differs."""

    archive_sha256: str | None = None
    content_hash: str | None = None
    function: str | None = None

    def __post_init__(self) -> None:
        for flag, value in (
            ("--expect-archive-sha256", self.archive_sha256),
            ("--expect-content-hash", self.content_hash),
        ):
            if value is not None and not SHA256.fullmatch(value):
                raise UnusableInput(f"{flag}: {quote(value)} is not 64 lowercase hex digits")
        if self.function is not None and (problem := dns_label_problem(self.function)):
            raise UnusableInput(f"--expect-function: {quote(self.function)} {problem}")

    @property
    def pinned(self) -> bool:
        return self.archive_sha256 is not None or self.content_hash is not None


# --- the shapes read (strict: a wrong type anywhere is a refusal, never a traceback) ---------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Signature(_Strict):
    keyid: str = ""
    sig: str


class _Envelope(_Strict):
    payloadType: str
    payload: str
    signatures: list[_Signature]


class _Digest(_Strict):
    sha256: str


class _Subject(_Strict):
    name: str
    digest: _Digest


class _Request(_Strict):
    id: str
    source: str


class _External(_Strict):
    function: str
    runtime: str
    runtimeVersion: str
    dependencies: list[Annotated[list[str], Field(min_length=2, max_length=2)]]
    dependenciesLocked: bool = False
    lock: dict[str, Any] | None = None
    request: _Request
    files: dict[str, _Digest]


class _Internal(_Strict):
    registryMirror: str = ""
    images: dict[str, str]


class _Resolved(_Strict):
    uri: str
    name: str = ""


class _Definition(_Strict):
    buildType: str
    externalParameters: _External
    internalParameters: _Internal
    resolvedDependencies: list[_Resolved] = []


class _Predicate(_Strict):
    buildDefinition: _Definition


class Statement(_Strict):
    type: str = Field(alias="_type")
    subject: list[_Subject]
    predicateType: str
    predicate: _Predicate

    @property
    def external(self) -> _External:
        return self.predicate.buildDefinition.externalParameters

    def digest(self, name: str) -> str:
        found = [s.digest.sha256 for s in self.subject if s.name == name]
        if len(found) != 1:
            raise MalformedStatement(f"the statement must name the subject {name} once")
        return found[0]


@dataclass(frozen=True)
class Verified:
    statement: dict[str, Any]
    parsed: Statement
    keyid: str | None
    """The key that verified the signature; None when unsigned was allowed."""


def verify(
    archive_bytes: bytes,
    envelope_bytes: bytes,
    keys: Sequence[VerifyingKey],
    allow_unsigned: bool = False,
    expected: Expected | None = None,
) -> Verified:
    """Every check, in order; the first that fails raises its VerificationFailed."""
    expected = expected or Expected()
    archive_sha256 = _check_pinned(archive_bytes, expected)
    payload, signatures = _read_envelope(envelope_bytes)
    signer = _check_signature(payload, signatures, keys, allow_unsigned)
    body = _json(payload, "the statement", MalformedStatement)
    parsed, runtime, images = _statement(body)
    _check_expected(parsed, expected)
    files = _check_subjects(archive_bytes, archive_sha256, parsed)
    _check_rendered(files, parsed, runtime, images)
    return Verified(body, parsed, signer)


def _check_pinned(archive_bytes: bytes, expected: Expected) -> str:
    """The archive's sha256, once it is within bounds and the expected one (if pinned)."""
    if len(archive_bytes) > MAX_ARCHIVE_BYTES:
        raise MalformedArchive(f"the archive is larger than {MAX_ARCHIVE_BYTES} bytes")
    archive_sha256 = hashlib.sha256(archive_bytes).hexdigest()
    if expected.archive_sha256 not in (None, archive_sha256):
        raise NotExpected(
            f"the archive's sha256 is {archive_sha256}, not the expected "
            f"{expected.archive_sha256} (a context swapped in the store?)"
        )
    return archive_sha256


def _check_subjects(archive_bytes: bytes, archive_sha256: str, parsed: Statement) -> Files:
    """The archive's files, once the archive and its tar are the statement's subjects, every
    file's digest is the recorded one and the tar is the canonical one we pack."""
    if archive_sha256 != parsed.digest(ARCHIVE_SUBJECT):
        raise ContentMismatch(f"the archive's sha256 is not the subject {ARCHIVE_SUBJECT}'s")
    tar = unpack.inflate(archive_bytes)
    if hashlib.sha256(tar).hexdigest() != parsed.digest(CONTENT_SUBJECT):
        raise ContentMismatch(f"the tar's sha256 is not the subject {CONTENT_SUBJECT}'s")
    files = unpack.members(tar)
    recorded = {path: {"sha256": d.sha256} for path, d in parsed.external.files.items()}
    actual = file_digests(files)
    if actual != recorded:
        changed = sorted(
            set(actual) ^ set(recorded) | {p for p in actual if recorded.get(p) != actual[p]}
        )
        raise ContentMismatch(
            "the archive's files differ from the statement's digests: "
            + ", ".join(quote(p) for p in changed[:5])
        )
    if archives.canonical_tar(files) != tar:
        raise ContentMismatch("the tar is not the canonical one build-context packs")
    return files


def _json(data: bytes, what: str, failure: type[VerificationFailed]) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no key twice in an object (parsers disagree on
    which one wins), nesting only as deep as the parser goes."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(items)
        if len(found) != len(items):
            twice = next(k for i, (k, _) in enumerate(items) if k in dict(items[:i]))
            raise failure(f"{what} names the key {quote(twice)} twice in one object")
        return found

    def constant(name: str) -> Any:
        raise failure(f"{what} holds {name}, which JSON does not have")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise failure(f"{what} nests too deeply to read") from None
    except (ValueError, UnicodeDecodeError):
        raise failure(f"{what} is not UTF-8 JSON") from None


def _shape(model: type[BaseModel], data: Any, what: str, failure: type[VerificationFailed]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise failure(f"{what}: {quote(where, 120)}: {first['msg']}") from None


def _read_envelope(data: bytes) -> tuple[bytes, list[_Signature]]:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelope(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    envelope: _Envelope = _shape(
        _Envelope, _json(data, "the envelope", MalformedEnvelope), "the envelope", MalformedEnvelope
    )
    if envelope.payloadType != PAYLOAD_TYPE:
        raise MalformedEnvelope(f"not a DSSE envelope with payloadType {PAYLOAD_TYPE}")
    return _base64(envelope.payload, "payload"), envelope.signatures


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise MalformedEnvelope(f"the envelope's {what} is not base64") from None


def _check_signature(
    payload: bytes, signatures: list[_Signature], keys: Sequence[VerifyingKey], allow_unsigned: bool
) -> str | None:
    """The keyid that verifies a signature; None when unsigned is allowed and there is none."""
    if not signatures:
        if allow_unsigned:
            return None
        raise SignatureRefused("the envelope is unsigned (the function had no signing key)")
    if not keys:
        raise SignatureRefused("no public key given to check the signature with")
    signer = _signer(pae(PAYLOAD_TYPE, payload), signatures, keys)
    if signer is None:
        ids = ", ".join(quote(s.keyid, 16) for s in signatures if s.keyid)
        raise SignatureRefused(
            "no signature verifies with the given public key(s) "
            f"(signed by keyid {ids or 'unknown'})"
        )
    return signer


def _signer(
    message: bytes, signatures: list[_Signature], keys: Sequence[VerifyingKey]
) -> str | None:
    """The first key that verifies a signature it may have made (a keyid, if given, is its)."""
    for signature in signatures:
        raw = _base64(signature.sig, "sig")
        for key in keys:
            if signature.keyid in ("", key.keyid) and key.verifies(raw, message):
                return key.keyid
    return None


def _statement(body: Any) -> tuple[Statement, Runtime, dict[str, Any]]:
    """The statement, the runtime it names and the image settings it records, once it is ours
    (types and parameters) and names a runtime, version and images we render with."""
    parsed: Statement = _shape(Statement, body, "the statement", MalformedStatement)
    if (parsed.type, parsed.predicateType, parsed.predicate.buildDefinition.buildType) != (
        STATEMENT_TYPE,
        PREDICATE_TYPE,
        BUILD_TYPE,
    ):
        raise MalformedStatement(
            f"not an in-toto Statement v1 with a SLSA Provenance v1 predicate of {BUILD_TYPE}"
        )
    runtime = RUNTIMES.get(parsed.external.runtime)
    if runtime is None or parsed.external.runtimeVersion not in runtime.versions:
        raise MalformedStatement("the statement names no runtime and version we render")
    images = _recorded_images(parsed.predicate.buildDefinition.internalParameters.images, runtime)
    return parsed, runtime, images


def _check_expected(parsed: Statement, expected: Expected) -> None:
    for what, wanted, found in (
        ("function", expected.function, parsed.external.function),
        ("content hash", expected.content_hash, parsed.digest(CONTENT_SUBJECT)),
        ("archive sha256", expected.archive_sha256, parsed.digest(ARCHIVE_SUBJECT)),
    ):
        if wanted is not None and wanted != found:
            raise NotExpected(
                f"the statement's {what} is {quote(found)}, not the expected {quote(wanted)} "
                "(another function's context, or another version, swapped in the store?)"
            )


def _recorded_images(recorded: Mapping[str, str], runtime: Runtime) -> dict[str, Any]:
    """The image settings to render with: every image of the runtime must be recorded, and no
    key we do not know (the other runtimes' images do not shape its Dockerfile: a context
    made before a runtime was added still verifies)."""
    unknown = sorted(set(recorded) - {image.key for image in IMAGES})
    missing = [image.key for image in runtime.images if image.key not in recorded]
    if unknown or missing:
        raise MalformedStatement(
            "internalParameters.images must name every base image of the runtime "
            f"({', '.join(image.key for image in runtime.images)}) and no other than "
            f"{', '.join(image.key for image in IMAGES)}"
        )
    return {image.setting: recorded[image.key] for image in IMAGES if image.key in recorded}


def _check_rendered(
    files: Files, parsed: Statement, runtime: Runtime, images: Mapping[str, Any]
) -> None:
    internal = parsed.predicate.buildDefinition.internalParameters
    external = parsed.external
    try:
        settings = Settings(registry_mirror=internal.registryMirror, **images)
        pinned = tuple((name, spec) for name, spec in external.dependencies)
        sources = {p: b.decode() for p, b in files.items() if runtime.is_source(p)}
        rendered = runtime.render(external.runtimeVersion, pinned, settings, external.lock, sources)
    except Exception as error:  # a forged statement must end as a refusal, whatever it holds
        raise MalformedStatement(
            f"cannot render from the statement's parameters: {quote(str(error), 200)}"
        ) from None
    for path, text in rendered.files().items():
        if files.get(path) != text.encode():
            raise ContentMismatch(
                f"{path} is not what build-context renders from the statement's parameters"
            )
