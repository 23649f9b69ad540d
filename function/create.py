"""The create use-case: request -> validated -> rendered -> archived -> stored -> reply data.

It knows the Store interface, never a backend (the cleanup use-case is cleanup.py)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import archive as archives
from . import boundary, credentials, provenance
from . import record as records
from .contract import BuildContextCreated, BuildContextRequest, Provenance, SecretFinding
from .errors import (
    CapacityExceeded,
    ContextTooLarge,
    FieldError,
    InvalidRequest,
    QuotaExceeded,
    StorageForbidden,
)
from .limits import FunctionLimits
from .secret_scan import check_credentials
from .settings import Settings
from .stores.base import ContextRecord, Store, Stored, utcnow
from .telemetry import NOOP, Telemetry
from .validation import ValidRequest, parse, validate

log = logging.getLogger("build_context")


@dataclass(frozen=True)
class Built:
    """A checked, rendered, packed and signed context, not stored yet."""

    valid: ValidRequest
    namespace: str
    archive: archives.Archive
    envelope: bytes
    """DSSE envelope (JSON) of the in-toto provenance statement; unsigned without a key."""
    secret_warnings: credentials.Scan = credentials.NOTHING


def _event_source(source: str) -> str:
    """The request event's `source` goes into the provenance: the boundary's CloudEvent check
    (func.py refuses a bad one before this; a direct caller gets the same answer)."""
    if source and not boundary.is_event_source(source):
        message = (
            f"source: the event's source attribute {boundary.quote(source)} must be a "
            f"URI-reference of at most {boundary.EVENT_SOURCE_MAX} visible ASCII characters "
            "(percent-encode anything else)"
        )
        raise InvalidRequest(message, [FieldError(message, field="source")])
    return source


@dataclass
class CreateService:
    settings: Settings
    store: Store[Any]
    overflow: Store[Any] | None = None
    telemetry: Telemetry = NOOP
    clock: Callable[[], datetime] = utcnow
    signer: provenance.SigningKey | None = None
    limits: FunctionLimits | None = None

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = FunctionLimits(self.settings, self.store.lock_folder())

    def build(
        self,
        data: Any,
        request_id: str,
        request_source: str = "",
        attributes: dict[str, str] | None = None,
    ) -> Built:
        """Validate, render, pack and sign: everything before the store."""
        attributes = attributes if attributes is not None else {}
        started = self.clock()
        with self.telemetry.stage("validate", attributes):
            request = parse(data)
            valid = validate(request, self.settings)
            attributes["runtime"] = valid.runtime.name
            namespace = self._namespace(request)
            source = _event_source(request_source)
        with self.telemetry.stage("render", attributes):
            rendered = valid.rendered
            files = valid.context_files()
            # The manifests carry the request's dependencies (a URL dependency may hold a
            # token) into the context: no secret there either.
            warnings = valid.credential_warnings + check_credentials(
                rendered.manifests, self.settings, lambda _: "dependencies"
            )
        for finding in warnings.findings:
            log.warning(
                "credential in the source",
                extra={
                    "requestId": request_id,
                    "function": valid.function,
                    "file": finding.file,
                    "line": finding.line,
                    "kind": finding.kind,
                },
            )
        if warnings.omitted:
            log.warning(
                "credentials in the source not listed",
                extra={
                    "requestId": request_id,
                    "function": valid.function,
                    "omitted": warnings.omitted,
                },
            )
        with self.telemetry.stage("archive", attributes):
            encoded = {path: text.encode("utf-8") for path, text in files.items()}
            archive = archives.build_encoded(encoded)
        with self.telemetry.stage("sign", attributes):
            parameters = provenance.BuildParameters(
                recorded=valid.recorded,
                dependencies=valid.dependencies,
                request_id=request_id,
                request_source=source,
                lock=valid.lock,
                locked=valid.dependencies_locked,
            )
            statement = provenance.statement(
                archive,
                encoded,
                parameters,
                provenance.internal_parameters(self.settings),
                rendered.dockerfile,
                started,
                self.clock(),
            )
            envelope = provenance.envelope(statement, self.signer)
        return Built(
            valid, namespace, dataclasses.replace(archive, provenance=envelope), envelope, warnings
        )

    def run(self, data: Any, request_id: str, request_source: str = "") -> BuildContextCreated:
        attributes = {"store": self.store.backend, "runtime": "unknown"}
        built = self.build(data, request_id, request_source, attributes)
        valid, archive = built.valid, built.archive
        now = self.clock()
        record = ContextRecord.for_archive(
            archive,
            created_at=now,
            ttl=timedelta(seconds=valid.ttl_seconds),
            namespace=built.namespace,
            request_id=request_id,
            **valid.recorded,
        )
        with self.telemetry.stage("store", attributes) as span:
            assert self.limits is not None
            stores = [self.store, *([self.overflow] if self.overflow else [])]
            try:
                stored, overflowed = self.limits.admit(
                    stores, archive, record, now, lambda: self._store(archive, record, valid)
                )
            except QuotaExceeded as error:
                self.telemetry.quota_refused.add(1, {"limit": error.limit})
                raise
            span.set_attribute("build_context.reused", stored.reused)
        self.telemetry.archive_size.record(archive.size_bytes, attributes)
        if stored.reused:
            self.telemetry.reuses.add(1, attributes)
        # What is stored is echoed as stored (on reuse, the first request's), field by field
        # from the record's table (function.record); the rest describes this request.
        return BuildContextCreated(
            **records.echoed(stored.record),
            image_tag=archive.image_tag,
            storage=stored.storage,
            context_uri=stored.context_uri,
            files=list(archive.files),
            reused=stored.reused,
            overflow=overflowed,
            dependencies_locked=valid.dependencies_locked,
            request_id=request_id,
            warnings=list(valid.warnings),
            secret_warnings=[
                SecretFinding(file=f.file, line=f.line, kind=f.kind)
                for f in built.secret_warnings.findings
            ]
            or None,
            secret_warnings_omitted=built.secret_warnings.omitted or None,
            provenance=self._provenance(stored, built, overflowed),
        )

    def _provenance(self, stored: Stored, built: Built, overflowed: bool) -> Provenance:
        """What the stored envelope is: ours, or, for a reused context, the one stored first
        (perhaps signed with an earlier key, or unsigned)."""
        if stored.provenance is None:
            # Every store keeps an envelope with a new context; one stored before provenance
            # existed, and reused now, has none: nothing signed to show.
            return Provenance(signed=False, predicate_type=provenance.PREDICATE_TYPE)
        envelope = built.envelope
        if stored.reused:
            record = stored.record
            store = self.overflow if overflowed and self.overflow else self.store
            try:
                envelope = store.get_provenance(
                    record.namespace, record.function, record.content_hash
                )
            except KeyError:
                return Provenance(signed=False, predicate_type=provenance.PREDICATE_TYPE)
        keyids = provenance.signer_keyids(envelope)
        return Provenance(
            signed=bool(keyids),
            keyid=keyids[0] if keyids else None,
            predicate_type=provenance.PREDICATE_TYPE,
            envelope=stored.provenance,
        )

    def _namespace(self, request: BuildContextRequest) -> str:
        home = self.settings.home_namespace
        wanted = request.namespace or home
        if wanted not in self.settings.namespaces:
            message = (
                f"namespace: {wanted!r} is not allowed; this function writes to {home!r}"
                + (
                    f" and {', '.join(sorted(self.settings.extra_namespaces))}"
                    if self.settings.extra_namespaces
                    else ""
                )
                + "; add it to BUILD_CONTEXT_ALLOWED_NAMESPACES (and grant the Role there)"
            )
            raise StorageForbidden(message, [FieldError(message, field="namespace")])
        return wanted

    def _store(
        self, archive: archives.Archive, record: ContextRecord, valid: ValidRequest
    ) -> tuple[Stored, bool]:
        try:
            return self.store.put_if_absent(archive, record, valid.owner), False
        except (ContextTooLarge, CapacityExceeded):
            if self.overflow is None:
                raise
            return self.overflow.put_if_absent(archive, record, valid.owner), True
