"""Our repositories on one registry client, shared by the store and its sweeper (cleanup.py) as
the S3 store's parts share their Bucket: every call goes through one funnel (a span, retries,
the client's error typed once: errors.py), and the record is read and written here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ...errors import StorageConflict
from ..base import ContextRecord
from ..calls import StorageCalls
from .client import OCI_MANIFEST, RegistryClient
from .errors import Call
from .image import ContextImage, record_from_manifest, record_manifest

T = TypeVar("T")

RECORD_SUFFIX = ".record"
RETAIN_SUFFIX = ".retain"
ENVELOPE_SUFFIX = ".dsse"
"""The provenance envelope's tag (provenance.py): ours, never a user's pin."""
CONTEXT_TAG = re.compile(r"sha256-[0-9a-f]{24}")

Found = tuple[ContextRecord, str, str]
"""A record as read: the record, the record manifest's digest, and its subject's digest."""


@dataclass(frozen=True)
class Repositories:
    client: RegistryClient
    prefix: str
    calls: StorageCalls
    page_size: int

    @property
    def registry(self) -> str:
        return self.client.registry

    def repository(self, namespace: str, function: str) -> str:
        return f"{self.prefix}/{namespace}/{function}"

    def namespace_of(self, repository: str) -> str | None:
        """The namespace of one of our repositories; None for any other repository."""
        match = re.fullmatch(re.escape(self.prefix) + r"/([a-z0-9-]+)/[a-z0-9-]+", repository)
        return None if match is None else match.group(1)

    def call(self, what: str, repository: str, operation: Callable[[], T]) -> T:
        """One registry call (or a few that belong together) through the shared funnel."""
        return self.calls.run(
            what,
            operation,
            Call(what, self.registry, repository).translate,
            span=f"oci {what}",
            attributes={"server.address": self.registry, "build_context.repository": repository},
            fields={"registry": self.registry, "repository": repository},
        )

    # --- the calls the store and the sweeper share -------------------------------------------

    def repositories(self) -> list[str]:
        """Every repository in the catalog after our prefix (the catalog is sorted)."""
        after = f"{self.prefix}/"
        return self.call(
            "list repositories",
            self.prefix,
            lambda: list(self.client.repositories(self.page_size, after)),
        )

    def tags(self, repository: str) -> list[str]:
        return self.call(
            "list tags", repository, lambda: list(self.client.tags(repository, self.page_size))
        )

    def head(self, repository: str, reference: str, what: str = "read tag") -> str | None:
        """The digest `reference` points at; None when absent."""
        return self.call(what, repository, lambda: self.client.head_manifest(repository, reference))

    def delete(self, repository: str, digest: str, what: str) -> bool:
        """Delete a manifest by digest; False when it was already gone."""
        return self.call(what, repository, lambda: self.client.delete_manifest(repository, digest))

    def read_record(self, repository: str, tag: str) -> Found | None:
        """The record of the context tagged `tag`; None when there is none."""
        found = self.call(
            "read record",
            repository,
            lambda: self.client.get_manifest(repository, tag + RECORD_SUFFIX),
        )
        if found is None:
            return None
        data, digest = found
        try:
            record, subject = record_from_manifest(data)
        except ValueError:
            raise StorageConflict(
                f"OCI store: {self.registry}/{repository}:{tag}{RECORD_SUFFIX} was not written "
                "by build-context; it is left as it is"
            ) from None
        return record, digest, subject

    def put_record(
        self, repository: str, tag: str, record: ContextRecord, context: ContextImage
    ) -> None:
        body = record_manifest(record, context)
        self.call(
            "push record",
            repository,
            lambda: self.client.put_manifest(repository, tag + RECORD_SUFFIX, body, OCI_MANIFEST),
        )

    def tag_context(self, repository: str, tag: str, context: ContextImage) -> None:
        self.call(
            "tag context",
            repository,
            lambda: self.client.put_manifest(repository, tag, context.manifest, OCI_MANIFEST),
        )
