"""The OCI store's cleanup side: find our contexts through the catalog and delete each one with
its re-checks (a pin, a reuse while deleting; docs/oci.md, Races)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ...errors import StorageConflict
from ..base import Deletion, Listed, StillExpired
from ..failures import NotFound, Unsupported
from .image import ContextImage

if TYPE_CHECKING:
    from .store import OCIStore

RECORD_SUFFIX = ".record"
RETAIN_SUFFIX = ".retain"
ENVELOPE_SUFFIX = ".dsse"
"""The provenance envelope's tag (provenance.py): ours, never a user's pin."""
CONTEXT_TAG = re.compile(r"sha256-[0-9a-f]{24}")
LIST_CONCURRENCY = 8
DELETE_CONCURRENCY = 8


@dataclass(frozen=True)
class Handle:
    """What `delete` needs: it re-reads the record and the context under `tag` itself."""

    repository: str
    tag: str
    foreign_tags: tuple[str, ...]


class Sweeper:
    """List and delete for `OCIStore`, through its calls (one wrapper for spans, retries and
    typed errors) and its record reading."""

    def __init__(self, store: OCIStore) -> None:
        self.store = store

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[Handle]]:
        """Our repositories from the catalog, their tags page by page, records a few at a time."""
        after = f"{self.store.prefix}/"
        try:
            repositories = self.store.call(
                "list repositories",
                self.store.prefix,
                lambda: list(self.store.client.repositories(self.store.page_size, after)),
            )
        except NotFound:
            raise Unsupported(
                f"OCI store: {self.store.registry} does not serve the catalog (GET /v2/_catalog), "
                "which cleanup needs to find our repositories; enable it, or leave expiry to "
                "the registry's own retention rules (docs/oci.md)"
            ) from None
        with ThreadPoolExecutor(LIST_CONCURRENCY, thread_name_prefix="oci-list") as pool:
            for repository in repositories:
                match = self.store.layout.fullmatch(repository)
                if match is None:
                    continue
                if namespaces is not None and match.group(1) not in namespaces:
                    continue
                yield from self._list_repository(repository, pool)

    def _list_repository(
        self, repository: str, pool: ThreadPoolExecutor
    ) -> Iterator[Listed[Handle]]:
        tags = self.store.call(
            "list tags",
            repository,
            lambda: list(self.store.client.tags(repository, self.store.page_size)),
        )
        records = [t for t in tags if t.endswith(RECORD_SUFFIX)]
        envelopes = {t for t in tags if t.endswith(ENVELOPE_SUFFIX)}
        ours = {t for t in tags if CONTEXT_TAG.fullmatch(t)} | set(records) | envelopes
        foreign = sorted(set(tags) - ours)
        pinned = set(
            pool.map(
                lambda t: self.store.call(
                    "read tag", repository, lambda: self.store.client.head_manifest(repository, t)
                ),
                foreign,
            )
        )

        def read(record_tag: str) -> Listed[Handle] | None:
            tag = record_tag.removesuffix(RECORD_SUFFIX)
            if not CONTEXT_TAG.fullmatch(tag):
                return None
            try:
                found = self.store.call(
                    "read record", repository, lambda: self.store.read_record(repository, tag)
                )
            except StorageConflict:
                return None
            if found is None:
                return None
            record, _, subject = found
            handle = Handle(repository, tag, tuple(foreign))
            return Listed(replace(record, retain=subject in pinned), handle)

        for listed in pool.map(read, records):
            if listed is not None:
                yield listed

    def delete(self, item: Listed[Handle], still_expired: StillExpired) -> Deletion:
        handle = item.handle
        repository, tag = handle.repository, handle.tag
        found = self.store.call(
            "read record", repository, lambda: self.store.read_record(repository, tag)
        )
        if found is None:
            return Deletion.GONE
        record, record_digest, subject = found
        if self._pinned(handle, subject) or not still_expired(record):
            return Deletion.KEPT
        context = ContextImage.from_record(record)
        if context.digest != subject:
            return Deletion.KEPT  # not a record this version of the store wrote: leave it
        self.store.call(
            "delete context",
            repository,
            lambda: self.store.client.delete_manifest(repository, subject),
        )
        after = self.store.call(
            "read record",
            repository,
            lambda: self.store.client.head_manifest(repository, tag + RECORD_SUFFIX),
        )
        if after is None:
            return Deletion.GONE  # another cleanup run finished this delete
        if after != record_digest:
            # Reused while we deleted: put the context back, rebuilt from its record (its blobs
            # stay until registry GC, which runs with the registry read-only, so not now).
            self.store.tag_context(repository, tag, context)
            return Deletion.KEPT
        # Of two cleanup runs on the same context, the DELETE of the record usually finds it
        # for one only; a registry may answer 202 to both (docs/oci.md, Races).
        deleted: bool = self.store.call(
            "delete record",
            repository,
            lambda: self.store.client.delete_manifest(repository, record_digest),
        )
        return Deletion.DELETED if deleted else Deletion.GONE

    def _pinned(self, handle: Handle, subject: str) -> bool:
        """A tag we did not make on the context, looked at again right before deleting."""
        candidates = (*handle.foreign_tags, handle.tag + RETAIN_SUFFIX)
        for other in dict.fromkeys(candidates):
            digest = self.store.call(
                "read tag",
                handle.repository,
                lambda other=other: self.store.client.head_manifest(handle.repository, other),  # type: ignore[misc]
            )
            if digest == subject:
                return True
        return False
