"""The OCI store: push, reuse, read, list and delete contexts (the layout is in __init__)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ...archive import Archive, image_tag
from ...contract import OwnerReference
from ...errors import StorageConflict
from ...retry import RetryPolicy
from ...settings import Settings
from ...telemetry import NOOP, Telemetry
from ..base import (
    MANAGED_BY,
    ContextRecord,
    Deletion,
    Listed,
    Outcomes,
    StillExpired,
    Store,
    Stored,
)
from ..calls import StorageCalls
from ..failures import NotFound, StoreError
from .cleanup import Handle, Sweeper
from .client import RegistryClient, RegistryError
from .credentials import configured_ca_file, configured_credentials
from .errors import RegistryBoundary
from .image import EMPTY, EMPTY_DIGEST, MANAGED, ContextImage
from .repositories import RECORD_SUFFIX, Repositories

T = TypeVar("T")
log = logging.getLogger("build_context.oci")

MAX_LAYER_BYTES = 512 * 1024 * 1024


class OCIStore(Store[Handle]):
    setting_names = (
        "oci_registry",
        "oci_repository",
        "oci_docker_config",
        "oci_ca_file",
        "oci_insecure_http",
    )
    docs_page = "docs/oci.md"
    backend = "oci"
    lists_by_function = True  # one repository per function, the catalog in lexical order

    def __init__(
        self,
        client: RegistryClient,
        repository_prefix: str = "build-contexts",
        *,
        page_size: int = 500,
        retry: RetryPolicy | None = None,
        telemetry: Telemetry = NOOP,
        cleanup_concurrency: int = 8,
    ) -> None:
        self.client = client
        self.registry = client.registry
        self.prefix = repository_prefix
        calls = StorageCalls(self.backend, RegistryBoundary(), telemetry, retry or RetryPolicy())
        self.repositories = Repositories(client, repository_prefix, calls, page_size)
        self.sweeper = Sweeper(self.repositories, cleanup_concurrency)
        self._known_blobs: set[tuple[str, str]] = set()
        """(repository, digest) of the shared empty blob once pushed; blobs outlive manifests
        until registry GC, which runs with the registry read-only (docs/oci.md)."""

    @classmethod
    def from_settings(cls, settings: Settings, telemetry: Telemetry = NOOP) -> OCIStore:
        return cls(
            RegistryClient(
                settings.oci_registry,
                credentials=configured_credentials(settings),
                insecure_http=settings.oci_insecure_http,
                ca_file=configured_ca_file(settings.oci_ca_file),
                timeout=settings.retry_deadline_seconds,
                pool_size=settings.server_threads + settings.cleanup_concurrency,
            ),
            settings.oci_repository,
            page_size=settings.cleanup_page_size,
            retry=RetryPolicy.from_settings(settings),
            telemetry=telemetry,
            cleanup_concurrency=settings.cleanup_concurrency,
        )

    def repository(self, namespace: str, function: str) -> str:
        return self.repositories.repository(namespace, function)

    def check(self) -> None:
        """Unreachable or refusing registries only warn: requests then fail retryably."""
        try:
            self.client.check()
        except RegistryError as error:
            log.warning(
                "OCI store: registry probe failed at start-up; requests will fail until fixed",
                extra={"registry": self.registry, "error": error.message},
            )

    def close(self) -> None:
        self.client.close()

    # --- create ----------------------------------------------------------------------------

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        repository = self.repository(record.namespace, record.function)
        tag = image_tag(record.content_hash)
        context = ContextImage.of(archive, record)
        found = self.repositories.read_record(repository, tag)
        if found is None:
            self._push_blobs(repository, archive, context, new=True)
            self.repositories.put_record(repository, tag, record, context)
            self.repositories.tag_context(repository, tag, context)
            return self._stored(repository, tag, context, record, reused=False)
        existing, record_digest, subject = found
        if existing.content_hash != record.content_hash or subject != context.digest:
            raise StorageConflict(
                f"OCI store: {self.registry}/{repository}:{tag}{RECORD_SUFFIX} describes another "
                "context; it is left as it is. Remove it or change BUILD_CONTEXT_OCI_REPOSITORY."
            )
        wanted = self._refresh(repository, tag, context, existing, record_digest, record)
        current = self.repositories.head(repository, tag, "read context")
        if current != context.digest:
            if current is not None:
                raise StorageConflict(
                    f"OCI store: {self.registry}/{repository}:{tag} points at {current}, not at "
                    "the context image; it is left as it is"
                )
            # A crash before the last step, or a cleanup that deleted it a moment ago.
            self._push_blobs(repository, archive, context)
            self.repositories.tag_context(repository, tag, context)
        return self._stored(repository, tag, context, wanted, reused=True)

    def _refresh(
        self,
        repository: str,
        tag: str,
        context: ContextImage,
        existing: ContextRecord,
        digest: str,
        record: ContextRecord,
    ) -> ContextRecord:
        """Push the expiry forward; re-read, since a concurrent refresh may have written an
        earlier expiry last (the registry has no conditional write)."""
        wanted = existing.refreshed(record.expires_at)
        for _ in range(3):
            if wanted == existing:
                return wanted
            self.repositories.put_record(repository, tag, wanted, context)
            self._forget(repository, digest)
            found = self.repositories.read_record(repository, tag)
            if found is None:  # gone meanwhile: write it again; the caller re-tags the context
                self.repositories.put_record(repository, tag, wanted, context)
                return wanted
            existing, digest, _ = found
            if existing.expires_at >= wanted.expires_at:
                return existing
            wanted = existing.refreshed(record.expires_at)
        return wanted

    def _push_blobs(
        self, repository: str, archive: Archive, context: ContextImage, *, new: bool = False
    ) -> None:
        """A new context's blobs are uploaded at once (a HEAD would almost always miss);
        otherwise, and for the empty blob each repository shares, only what is missing."""
        blobs = (
            (f"sha256:{archive.archive_sha256}", archive.data, new),
            ("sha256:" + hashlib.sha256(context.config).hexdigest(), context.config, new),
            (EMPTY_DIGEST, EMPTY, False),
        )
        for digest, data, upload in blobs:
            if (repository, digest) in self._known_blobs:
                continue

            def push(digest: str = digest, data: bytes = data, upload: bool = upload) -> None:
                if upload or not self.client.has_blob(repository, digest):
                    self.client.upload_blob(repository, digest, data)

            self.call("push blob", repository, push)
            if digest == EMPTY_DIGEST:
                self._known_blobs.add((repository, digest))

    def _forget(self, repository: str, digest: str) -> None:
        """Delete a superseded record by digest; a leftover only costs registry GC a little."""
        try:
            self.repositories.delete(repository, digest, "delete record")
        except StoreError as error:
            log.warning(
                "OCI store: could not delete a superseded record",
                extra={"repository": repository, "digest": digest, "error": error.message},
            )

    def _stored(
        self,
        repository: str,
        tag: str,
        context: ContextImage,
        record: ContextRecord,
        *,
        reused: bool,
    ) -> Stored:
        storage = {
            "backend": self.backend,
            "registry": self.registry,
            "repository": repository,
            "tag": tag,
            "digest": context.digest,
        }
        uri = f"oci://{self.registry}/{repository}@{context.digest}"
        return Stored(record, storage, uri, reused)

    # --- read ------------------------------------------------------------------------------

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        return self._read_layer(
            (namespace, function, content_hash),
            "",
            ("read context", "read layer"),
            lambda manifest: manifest["annotations"][MANAGED] == MANAGED_BY,
            MAX_LAYER_BYTES,
        )

    def _read_layer(
        self,
        key: tuple[str, str, str],
        suffix: str,
        operations: tuple[str, str],
        ours: Callable[[Any], bool],
        limit: int,
    ) -> bytes:
        """The one layer of the manifest tagged with the content hash (plus `suffix`), read
        with the two operations' names (manifest, blob) and at most `limit` bytes. KeyError
        when the tag, the manifest's shape, `ours` or the blob says it is not there."""
        namespace, function, content_hash = key
        repository = self.repository(namespace, function)
        tag = image_tag(content_hash) + suffix
        found = self.call(
            operations[0], repository, lambda: self.client.get_manifest(repository, tag)
        )
        if found is None:
            raise KeyError(key)
        try:
            manifest = json.loads(found[0])
            if not ours(manifest):
                raise KeyError(key)
            layer = str(manifest["layers"][0]["digest"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise KeyError(key) from None
        try:
            data: bytes = self.call(
                operations[1], repository, lambda: self.client.get_blob(repository, layer, limit)
            )
        except NotFound:
            raise KeyError(key) from None
        return data

    # --- cleanup (cleanup.py) ----------------------------------------------------------------

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[Handle]]:
        return self.sweeper.list(namespaces)

    def delete(self, item: Listed[Handle], still_expired: StillExpired) -> Deletion:
        return self.sweeper.delete(item, still_expired)

    def delete_many(self, items: Sequence[Listed[Handle]], still_expired: StillExpired) -> Outcomes:
        """`delete` of each context, a few at a time (the registry has no batch delete)."""
        return self.sweeper.delete_many(
            items, lambda item: self.delete_or_error(item, still_expired)
        )

    def call(self, what: str, repository: str, operation: Callable[[], T]) -> T:
        """One registry call through the funnel the store shares with its sweeper."""
        return self.repositories.call(what, repository, operation)
