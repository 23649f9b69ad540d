"""The public contract: CloudEvent types and their JSON payloads.

camelCase on the wire; the story's snake_case spellings are accepted on input too.
JSON Schemas in `config/schemas/` are generated from these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from .errors import FailureReason
from .runtimes import DEFAULT, RUNTIMES

REQUESTED = "remediation.buildcontext.requested"
CREATED = "buildcontext.created"
FAILED = "buildcontext.failed"
PING = "dev.knative.sources.ping"
CLEANUP_COMPLETED = "buildcontext.cleanup.completed"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def utc_text(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class OwnerReference(_Model):
    """The LambdaFunction that owns the context; Kubernetes deletes the context with it."""

    api_version: str = Field(min_length=1, max_length=253)
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    uid: str = Field(min_length=1, max_length=64)


class BuildContextRequest(_Model):
    """Data of `remediation.buildcontext.requested`. Deep checks happen in `validation`."""

    lambda_function: str = Field(description="Function name: a DNS-1123 label, at most 63 chars.")
    runtime: str = Field(
        DEFAULT.name,
        description=" | ".join(RUNTIMES)
        + f" (aliases: {', '.join(a for r in RUNTIMES.values() for a in r.aliases)}).",
    )
    runtime_version: str | None = Field(None, description="From the runtime's allow-list.")
    source_code: str | None = Field(None, description="Text of the entry file (remediation.<ext>).")
    files: dict[str, str] = Field(
        default_factory=dict, description="Relative path -> UTF-8 text, for multi-file programs."
    )
    dependencies: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="; ".join(f"{r.name}: {r.dependencies_description}" for r in RUNTIMES.values())
        + ".",
    )
    lock_file: str | None = Field(
        None,
        description="Text of the runtime's lock file, to install exactly what it pins: "
        + ", ".join(f"{r.lock_description} ({r.name})" for r in RUNTIMES.values())
        + ".",
    )
    ttl_seconds: int | None = Field(None, description="Lifetime; capped by configuration.")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Kept with the context (at most 768 bytes as ASCII JSON); the reply reports "
        "what is stored.",
    )
    namespace: str | None = Field(None, description="Target namespace, if allowed.")
    owner: OwnerReference | None = Field(
        None,
        description="Owning object, for garbage collection, while no other request shares the "
        "context.",
    )


class Storage(_Model):
    """Where the archive is, with everything needed to fetch it."""

    model_config = ConfigDict(extra="allow")

    backend: Literal["filesystem", "configmap", "s3", "oci"]


class SecretFinding(_Model):
    """Where a credential was found (BUILD_CONTEXT_SECRET_SCAN=warn); never the secret."""

    file: str
    line: int
    kind: str


class Provenance(_Model):
    """The context's signed provenance: an in-toto Statement in a DSSE envelope."""

    signed: bool = Field(
        description="false: no signing key is configured (BUILD_CONTEXT_SIGNING_KEY_FILE) and "
        "the envelope carries no signature."
    )
    keyid: str | None = Field(None, description="sha256 of the signing key's public key (DER).")
    predicate_type: str = Field(description="SLSA Provenance v1.")
    envelope: dict[str, Any] | None = Field(
        None, description="Where the DSSE envelope is stored, like `storage` for the archive."
    )


class BuildContextCreated(_Model):
    lambda_function: str
    runtime: str
    runtime_version: str
    content_hash: str = Field(description="sha256 hex of the canonical uncompressed tar.")
    archive_sha256: str = Field(description="sha256 hex of the stored .tar.gz bytes.")
    image_tag: str
    storage: Storage
    context_uri: str | None = Field(None, description="Value for kaniko's --context.")
    size_bytes: int
    files: list[str]
    created_at: datetime
    expires_at: datetime
    reused: bool
    overflow: bool = Field(False, description="True when stored in the overflow store.")
    dependencies_locked: bool = Field(
        False,
        description="True when the build installs exactly what a lock file pins (or there "
        "are no dependencies): the same context then builds the same dependencies.",
    )
    request_id: str = Field(description="The id of the event this replies to.")
    created_by_request_id: str = Field(
        description="The id of the request that stored the context: on reuse, an earlier one."
    )
    metadata: dict[str, str] = Field(
        description="The metadata stored with the context: on reuse, the first request's (a "
        "reuse never changes what is stored)."
    )
    provenance: Provenance | None = None
    secret_warnings: list[SecretFinding] | None = Field(
        None,
        description="Credentials found in the source and let through "
        "(BUILD_CONTEXT_SECRET_SCAN=warn): file, line and kind only; the first 20.",
    )
    secret_warnings_omitted: int | None = Field(
        None, description="Credentials found but not listed in `secretWarnings`."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the checks could not promise, e.g. a syntax check that is not exact "
        "for the requested runtimeVersion.",
    )

    @field_serializer("created_at", "expires_at")
    def _times(self, value: datetime) -> str:
        return utc_text(value)


class ErrorDetail(_Model):
    message: str
    field: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None


class BuildContextFailed(_Model):
    lambda_function: str | None = None
    reason: FailureReason
    message: str
    retryable: bool
    errors: list[ErrorDetail] = Field(
        default_factory=list, description="The first 20 problems found (errorsOmitted: the rest)."
    )
    errors_omitted: int | None = Field(
        None, description="Problems found but not listed in `errors` (absent when none)."
    )
    request_id: str


class CleanupRequest(_Model):
    """Optional JSON data of the PingSource event: it can only make a run stricter."""

    dry_run: bool | None = Field(
        None,
        description="true: report what would be deleted and delete nothing. false cannot undo "
        "a dry run asked for elsewhere (`cleanup --dry-run`).",
    )
    ttl_seconds: int | None = Field(
        None,
        ge=0,
        description="Also treat contexts created more than this many seconds ago as expired. "
        "Pinned, keep-latest and grace still apply; a larger value than a context's own TTL "
        "changes nothing. An event is refused below BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS "
        "(default 3600).",
    )


class StoreCleanupSummary(_Model):
    """What one run did in one store. scanned = deleted + sum(retained) + gone + errors."""

    store: str
    scanned: int = Field(0, description="Our contexts listed in the allowed namespaces.")
    expired: int = Field(0, description="Of those, past expiresAt (or the stricter TTL).")
    deleted: int = Field(
        0, description="Deleted; in a dry run, what would have been deleted (nothing was)."
    )
    retained: dict[str, int] = Field(
        default_factory=dict,
        description="Kept, by the first rule that kept them: active (not expired), pinned, "
        "keepLatest, grace, refreshed (reused or changed while the run went on).",
    )
    gone: int = Field(0, description="Listed, then removed by someone else before we came to it.")
    errors: int = Field(0, description="Items (or listings) that failed; details in the log.")
    leftovers: int = Field(
        0, description="Temporaries of crashed writes removed (filesystem store)."
    )
    duration_seconds: float = 0.0


class CleanupCompleted(_Model):
    """Data of `buildcontext.cleanup.completed`: the rules in force and the outcome per store."""

    dry_run: bool
    ttl_seconds: int | None = Field(None, description="Stricter TTL asked for by the event.")
    keep_latest: int
    grace_seconds: int
    started_at: datetime
    duration_seconds: float
    stores: list[StoreCleanupSummary]

    @field_serializer("started_at")
    def _times(self, value: datetime) -> str:
        return utc_text(value)


SCHEMAS: dict[str, type[BaseModel]] = {
    REQUESTED: BuildContextRequest,
    CREATED: BuildContextCreated,
    FAILED: BuildContextFailed,
    PING: CleanupRequest,
    CLEANUP_COMPLETED: CleanupCompleted,
}
