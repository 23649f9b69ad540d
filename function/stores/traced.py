"""Any store, with each call a span: storage shows in a trace whatever the backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from opentelemetry import trace

from ..archive import Archive
from ..contract import OwnerReference
from ..telemetry import Telemetry
from .base import ContextRecord, Deletion, H, Listed, Outcomes, StillExpired, Store, Stored, Swept


class TracedStore(Store[H]):
    def __init__(self, inner: Store[H], telemetry: Telemetry) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.lists_by_function = inner.lists_by_function
        self.telemetry = telemetry

    def check(self) -> None:
        self.inner.check()

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        with self.telemetry.storage_call(self.backend, "put_if_absent") as span:
            stored = self.inner.put_if_absent(archive, record, owner)
            span.set_attribute("build_context.reused", stored.reused)
            return stored

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        with self.telemetry.storage_call(self.backend, "get"):
            return self.inner.get(namespace, function, content_hash)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        with self.telemetry.storage_call(self.backend, "get_provenance"):
            return self.inner.get_provenance(namespace, function, content_hash)

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[H]]:
        """One span over the whole listing; not made current, so the caller's work between
        pages is not parented to it."""
        span = self.telemetry.tracer.start_span(
            "build_context.storage.list",
            kind=trace.SpanKind.CLIENT,
            attributes={"build_context.store": self.backend, "build_context.operation": "list"},
        )
        count = 0
        try:
            for item in self.inner.list(namespaces):
                count += 1
                yield item
        except Exception as error:
            span.record_exception(error)
            raise
        finally:
            span.set_attribute("build_context.listed", count)
            span.end()

    def delete(self, item: Listed[H], still_expired: StillExpired) -> Deletion:
        with self.telemetry.storage_call(self.backend, "delete") as span:
            deleted = self.inner.delete(item, still_expired)
            span.set_attribute("build_context.deleted", deleted is Deletion.DELETED)
            return deleted

    def delete_many(self, items: Sequence[Listed[H]], still_expired: StillExpired) -> Outcomes:
        with self.telemetry.storage_call(self.backend, "delete_many") as span:
            outcomes = self.inner.delete_many(items, still_expired)
            span.set_attribute("build_context.items", len(outcomes))
            span.set_attribute(
                "build_context.deleted", sum(o is Deletion.DELETED for o in outcomes)
            )
            return outcomes

    def sweep_leftovers(self, older_than: datetime, dry_run: bool) -> Swept:
        with self.telemetry.storage_call(self.backend, "sweep_leftovers") as span:
            swept = self.inner.sweep_leftovers(older_than, dry_run)
            span.set_attribute("build_context.removed", swept.removed)
            return swept

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        with self.telemetry.storage_call(self.backend, "function_contexts"):
            return iter(list(self.inner.function_contexts(namespace, function)))

    def function_sizes(self, namespace: str, function: str) -> Iterator[tuple[str, int]]:
        with self.telemetry.storage_call(self.backend, "function_sizes"):
            return iter(list(self.inner.function_sizes(namespace, function)))

    def lock_folder(self) -> Path | None:
        return self.inner.lock_folder()

    def close(self) -> None:
        self.inner.close()
