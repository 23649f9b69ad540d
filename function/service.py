"""The use-cases. They know the Store interface, never a backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import archive as archives
from .contract import BuildContextCreated, BuildContextRequest, SecretFinding
from .errors import CapacityExceeded, ContextTooLarge, FieldError, StorageForbidden
from .settings import Settings
from .stores.base import ContextRecord, Store, Stored, utcnow
from .telemetry import NOOP, Telemetry
from .validation import ValidRequest, parse, validate

log = logging.getLogger("build_context")


@dataclass
class BuildContextService:
    settings: Settings
    store: Store
    overflow: Store | None = None
    telemetry: Telemetry = NOOP
    clock: Callable[[], datetime] = utcnow

    def create(self, data: Any, request_id: str) -> BuildContextCreated:
        attributes = {"store": self.store.backend, "runtime": "unknown"}
        with self.telemetry.stage("validate", attributes):
            request = parse(data)
            valid = validate(request, self.settings)
            attributes["runtime"] = valid.runtime.name
            namespace = self._namespace(request)
        for finding in valid.credential_warnings:
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
        with self.telemetry.stage("render", attributes):
            rendered = valid.runtime.render(
                valid.runtime_version, valid.dependencies, self.settings
            )
            files = {**valid.sources, **rendered.files()}
        with self.telemetry.stage("archive", attributes):
            archive = archives.build(files)
        now = self.clock()
        record = ContextRecord.for_archive(
            archive,
            namespace=namespace,
            function=valid.function,
            runtime=valid.runtime.name,
            runtime_version=valid.runtime_version,
            created_at=now,
            ttl=timedelta(seconds=valid.ttl_seconds),
            request_id=request_id,
            metadata=valid.metadata,
        )
        with self.telemetry.stage("store", attributes) as span:
            stored, overflowed = self._store(archive, record, valid)
            span.set_attribute("build_context.reused", stored.reused)
        self.telemetry.archive_size.record(archive.size_bytes, attributes)
        if stored.reused:
            self.telemetry.reuses.add(1, attributes)
        return BuildContextCreated(
            lambda_function=valid.function,
            runtime=valid.runtime.name,
            runtime_version=valid.runtime_version,
            content_hash=archive.content_hash,
            archive_sha256=stored.record.archive_sha256,
            image_tag=archive.image_tag,
            storage=stored.storage,
            context_uri=stored.context_uri,
            size_bytes=stored.record.size_bytes,
            files=list(archive.files),
            created_at=stored.record.created_at,
            expires_at=stored.record.expires_at,
            reused=stored.reused,
            overflow=overflowed,
            request_id=request_id,
            metadata=dict(valid.metadata),
            secret_warnings=[
                SecretFinding(file=f.file, line=f.line, kind=f.kind)
                for f in valid.credential_warnings
            ]
            or None,
        )

    def _namespace(self, request: BuildContextRequest) -> str:
        home = self.settings.home_namespace
        wanted = request.namespace or home
        if wanted != home and wanted not in self.settings.extra_namespaces:
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
