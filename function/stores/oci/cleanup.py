"""The OCI store's cleanup side: find our contexts through the catalog and delete each one with
its re-checks (a pin, a reuse while deleting; docs/oci.md, Races). It works through the
repositories the store shares with it (repositories.py), never through the store."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

from ...errors import StorageConflict
from ..base import Deletion, Listed, Outcomes, StillExpired
from ..failures import NotFound, Unsupported
from .image import ContextImage
from .repositories import (
    CONTEXT_TAG,
    ENVELOPE_SUFFIX,
    RECORD_SUFFIX,
    RETAIN_SUFFIX,
    Found,
    Repositories,
)

__all__ = ["ENVELOPE_SUFFIX", "Handle", "Sweeper"]


@dataclass(frozen=True)
class Handle:
    """What `delete` needs besides the listed record: where the context is, the record as
    listed (its digest and subject) and the tags on it that we did not make."""

    repository: str
    tag: str
    foreign_tags: tuple[str, ...]
    record_digest: str = ""
    subject: str = ""
    envelope: bool = True
    """Whether the listing saw a provenance envelope tag (provenance.py deletes only then)."""


class Sweeper:
    """List and delete for the OCI store, `concurrency` requests (or contexts) at a time."""

    def __init__(self, repositories: Repositories, concurrency: int) -> None:
        self.repositories = repositories
        self.concurrency = concurrency

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[Handle]]:
        """Our repositories from the catalog, their tags page by page, records `concurrency`
        at a time."""
        ours = self.repositories
        try:
            repositories = ours.repositories()
        except NotFound:
            raise Unsupported(
                f"OCI store: {ours.registry} does not serve the catalog (GET /v2/_catalog), "
                "which cleanup needs to find our repositories; enable it, or leave expiry to "
                "the registry's own retention rules (docs/oci.md)"
            ) from None
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="oci-list") as pool:
            for repository in repositories:
                namespace = ours.namespace_of(repository)
                if namespace is None:
                    continue
                if namespaces is not None and namespace not in namespaces:
                    continue
                yield from self._list_repository(repository, pool)

    def _list_repository(
        self, repository: str, pool: ThreadPoolExecutor
    ) -> Iterator[Listed[Handle]]:
        ours = self.repositories
        tags = ours.tags(repository)
        records = [t for t in tags if t.endswith(RECORD_SUFFIX)]
        envelopes = {t for t in tags if t.endswith(ENVELOPE_SUFFIX)}
        made = {t for t in tags if CONTEXT_TAG.fullmatch(t)} | set(records) | envelopes
        foreign = tuple(sorted(set(tags) - made))
        pinned = set(pool.map(lambda t: ours.head(repository, t), foreign))

        def read(record_tag: str) -> Listed[Handle] | None:
            tag = record_tag.removesuffix(RECORD_SUFFIX)
            if not CONTEXT_TAG.fullmatch(tag):
                return None
            try:
                found = ours.read_record(repository, tag)
            except StorageConflict:
                return None
            if found is None:
                return None
            record, digest, subject = found
            envelope = tag + ENVELOPE_SUFFIX in envelopes
            handle = Handle(repository, tag, foreign, digest, subject, envelope)
            return Listed(replace(record, retain=subject in pinned), handle)

        for listed in pool.map(read, records):
            if listed is not None:
                yield listed

    def delete_many(
        self,
        items: Sequence[Listed[Handle]],
        delete: Callable[[Listed[Handle]], Deletion | Exception],
    ) -> Outcomes:
        """`delete` (one context, its exception as its outcome) for each item, `concurrency`
        at a time (the pool's threads; at most twice as many futures wait): the registry has
        no batch delete, and each context's re-checks and deletes are independent."""
        outcomes: Outcomes = [Deletion.GONE] * len(items)
        window: dict[Future[Deletion | Exception], int] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="oci-delete") as pool:
            for index, item in enumerate(items):
                if len(window) >= 2 * self.concurrency:  # a thread never idles for want of work
                    _settle(wait(window, return_when=FIRST_COMPLETED).done, window, outcomes)
                window[pool.submit(contextvars.copy_context().run, delete, item)] = index
            _settle(list(window), window, outcomes)
        return outcomes

    def delete(self, item: Listed[Handle], still_expired: StillExpired) -> Deletion:
        handle = item.handle
        repository, tag = handle.repository, handle.tag
        found = self._current(item)
        if found is None:
            return Deletion.GONE
        record, record_digest, subject = found
        if self._pinned(handle, subject) or not still_expired(record):
            return Deletion.KEPT
        context = ContextImage.from_record(record)
        if context.digest != subject:
            return Deletion.KEPT  # not a record this version of the store wrote: leave it
        ours = self.repositories
        ours.delete(repository, subject, "delete context")
        after = ours.head(repository, tag + RECORD_SUFFIX, "read record")
        if after is None:
            return Deletion.GONE  # another cleanup run finished this delete
        if after != record_digest:
            # Reused while we deleted: put the context back, rebuilt from its record (its blobs
            # stay until registry GC, which runs with the registry read-only, so not now).
            ours.tag_context(repository, tag, context)
            return Deletion.KEPT
        # Of two cleanup runs on the same context, the DELETE of the record usually finds it
        # for one only; a registry may answer 202 to both (docs/oci.md, Races).
        deleted = ours.delete(repository, record_digest, "delete record")
        return Deletion.DELETED if deleted else Deletion.GONE

    def _current(self, item: Listed[Handle]) -> Found | None:
        """The freshest record: the listed one while its tag still points at the same record
        manifest (a digest names its bytes), else read again."""
        handle, ours = item.handle, self.repositories
        if handle.record_digest:
            digest = ours.head(handle.repository, handle.tag + RECORD_SUFFIX, "read record")
            if digest is None:
                return None
            if digest == handle.record_digest:
                return replace(item.record, retain=False), digest, handle.subject
        return ours.read_record(handle.repository, handle.tag)

    def _pinned(self, handle: Handle, subject: str) -> bool:
        """A tag we did not make on the context, looked at again right before deleting."""
        candidates = (*handle.foreign_tags, handle.tag + RETAIN_SUFFIX)
        return any(
            self.repositories.head(handle.repository, other) == subject
            for other in dict.fromkeys(candidates)
        )


def _settle(
    done: Iterable[Future[Deletion | Exception]],
    window: dict[Future[Deletion | Exception], int],
    outcomes: MutableSequence[Deletion | Exception],
) -> None:
    for future in done:
        outcomes[window.pop(future)] = future.result()
