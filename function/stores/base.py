"""The one interface every store implements; the service knows nothing else about storage."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..archive import Archive
from ..contract import OwnerReference
from ..record import ContextRecord as ContextRecord

Clock = Callable[[], datetime]
StillExpired = Callable[["ContextRecord"], bool]
"""Cleanup's verdict on the freshest record: True while it may still be deleted."""
H = TypeVar("H")
MANAGED_BY = "build-context"
RETAIN = "build-context.dev/retain"
"""Label (ConfigMap), object tag (S3) or `retain` field (filesystem) that pins a context."""
PROVENANCE_FILE = "provenance.dsse.json"
"""Name of the provenance envelope beside `context.tar.gz` (file, ConfigMap key)."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Stored:
    record: ContextRecord
    storage: dict[str, Any]
    context_uri: str | None
    reused: bool
    provenance: dict[str, Any] | None = None
    """Where the provenance envelope is, like `storage` (None: the context has none)."""


@dataclass(frozen=True)
class Listed(Generic[H]):
    """A context found by `list`, with whatever the store needs to delete it safely."""

    record: ContextRecord
    handle: H


class Deletion(enum.Enum):
    """What `delete` did with one listed context."""

    DELETED = "deleted"
    KEPT = "kept"
    """The freshest record no longer qualifies: refreshed, pinned or rewritten meanwhile."""
    GONE = "gone"
    """Already deleted, or being deleted right now, by someone else (another cleanup run)."""


Outcomes = list[Deletion | Exception]
"""One per item of a `delete_many`, in order: what `delete` did, or the item's exception."""


@dataclass(frozen=True)
class Swept:
    """What a leftovers sweep found: removed (or, in a dry run, would remove) and failed."""

    removed: int = 0
    errors: int = 0


class Store(ABC, Generic[H]):
    """Backends fill in the four primitives; the rest has defaults that a backend may beat.
    Every registered store also declares the settings it reads and the page documenting it
    (tests/test_registries.py checks the page names each of those settings)."""

    backend: str
    setting_names: tuple[str, ...]
    """The Settings fields the store reads (its BUILD_CONTEXT_* variables)."""
    docs_page: str
    lists_by_function = False
    """True when `list` yields each function's contexts one after another: cleanup then holds
    the newest of one function at a time instead of every function's (cleanup.py)."""

    def check(self) -> None:
        """Fail at start-up (ConfigurationError) when the store cannot work at all."""

    @abstractmethod
    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        """Store once; identical content again is `reused` with its expiry pushed forward."""

    @abstractmethod
    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        """The archive bytes (KeyError when absent)."""

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        """The provenance envelope stored with the context (KeyError when absent)."""
        raise KeyError((namespace, function, content_hash))

    @abstractmethod
    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[H]]:
        """Every context we manage, page by page, with flat memory."""

    @abstractmethod
    def delete(self, item: Listed[H], still_expired: StillExpired) -> Deletion:
        """Delete unless the stored record changed meanwhile so that it no longer qualifies.

        `still_expired` is re-evaluated on the freshest record, never on the listed one.
        """

    def delete_many(self, items: Sequence[Listed[H]], still_expired: StillExpired) -> Outcomes:
        """`delete` for a page; one at a time here, a store with a batch call does better."""
        return [self.delete_or_error(item, still_expired) for item in items]

    def delete_or_error(self, item: Listed[H], still_expired: StillExpired) -> Deletion | Exception:
        """`delete` of one item, its exception returned as its outcome (see `Outcomes`)."""
        try:
            return self.delete(item, still_expired)
        except Exception as error:
            return error

    def sweep_leftovers(self, older_than: datetime, dry_run: bool) -> Swept:
        """Remove what crashed writes left behind, last changed before `older_than`.

        Nothing here: only a store whose writes can leave temporaries (the filesystem) has any.
        """
        return Swept()

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        """The records of one function's contexts, expired ones too (the per-function caps
        count them). Here by filtering `list` of the namespace; a store that can list one
        function alone does better."""
        for item in self.list(frozenset({namespace})):
            if item.record.function == function:
                yield item.record

    def function_sizes(self, namespace: str, function: str) -> Iterator[tuple[str, int]]:
        """(content hash, archive bytes) of everything one function has stored, expired or
        not: what a store can tell without reading each record (S3: from the listing)."""
        for record in self.function_contexts(namespace, function):
            yield record.content_hash, record.size_bytes

    def lock_folder(self) -> Path | None:
        """A folder every pod writing to this store shares (the filesystem store's volume),
        where the per-function limits keep their lock files so that they hold across those
        pods; None: there is none, each pod locks in a folder of its own."""
        return None

    def close(self) -> None:
        """Release clients and connections."""
