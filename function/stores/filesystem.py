"""Local or PVC folder: <root>/<namespace>/<function>/<contentHash>/{context.tar.gz,context.json}.

A context appears by renaming a finished temporary folder into place, so a crash never leaves
a visible partial context; a per-function lock file serialises put, refresh and delete.

Durability: the archive, the record, the provenance envelope and the temporary folder are
fsynced before the rename, and the function folder after it, so a context a reply announces
survives a crash. The fsyncs before the rename are independent and run at once (all but one on a
small thread pool, on the descriptors the files were written through): the filesystem then
commits them in one journal transaction instead of one after another, which took a new context
from four disk commits to about two (docs/performance.md).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from .. import record as records
from ..archive import Archive
from ..contract import OwnerReference
from ..errors import ConfigurationError, StorageUnavailable
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import (
    PROVENANCE_FILE,
    ContextRecord,
    Deletion,
    Listed,
    StillExpired,
    Store,
    Stored,
    Swept,
)
from .filesystem_index import FunctionIndex, FunctionIndexes

log = logging.getLogger("build_context.stores.filesystem")

ARCHIVE = "context.tar.gz"
RECORD = "context.json"
PROVENANCE = PROVENANCE_FILE
TEMP_PREFIX = ".tmp-"
SYNC_THREADS = 16
"""Threads that fsync beside the request threads: two per new context in flight."""


class FilesystemStore(Store[Path]):
    setting_names = ("fs_root",)
    docs_page = "docs/filesystem.md"
    backend = "filesystem"

    def __init__(self, root: Path, open_functions: int = 64) -> None:
        self.root = root.resolve()
        self._root = str(self.root)  # the request path joins strings: no Path objects per call
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._indexes = FunctionIndexes(self._root, ARCHIVE, open_functions)

    def _syncer(self) -> ThreadPoolExecutor:
        """Created on first use, so a process that forks after opening the store has its own."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fs-fsync")
            return self._pool

    def close(self) -> None:
        self._indexes.close()
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _sync_and_close(self, fds: list[int]) -> None:
        """fsync every descriptor, concurrently (the first in this thread), then close them all;
        raises the first failure once all have finished."""
        futures = [self._syncer().submit(os.fsync, fd) for fd in fds[1:]]
        errors: list[BaseException] = []
        try:
            os.fsync(fds[0])
        except OSError as exc:
            errors.append(exc)
        for future in futures:
            error = future.exception()
            if error is not None:
                errors.append(error)
        for fd in fds:
            os.close(fd)
        if errors:
            raise errors[0]

    @classmethod
    def from_settings(cls, settings: Settings, telemetry: Telemetry = NOOP) -> FilesystemStore:
        return cls(settings.fs_root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(
                "BUILD_CONTEXT_FS_ROOT", f"{self.root} is not a writable folder ({exc.strerror})"
            ) from None

    def lock_folder(self) -> Path:
        return self.root / ".limits"

    def folder(self, namespace: str, function: str, content_hash: str) -> str:
        return os.path.join(self._root, namespace, function, content_hash)

    def _stored(self, record: ContextRecord, reused: bool, provenance: bool) -> Stored:
        folder = self.folder(record.namespace, record.function, record.content_hash)
        path = os.path.join(folder, ARCHIVE)
        envelope = os.path.join(folder, PROVENANCE)
        return Stored(
            record,
            {"backend": self.backend, "path": path},
            f"tar://{path}",
            reused,
            {"backend": self.backend, "path": envelope} if provenance else None,
        )

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        try:
            with self._indexes.locked(record.namespace, record.function) as index:
                if record.content_hash in index.stored():
                    return self._reuse(index, record)
                return self._create(index, archive, record)
        except OSError as exc:
            raise StorageUnavailable(
                f"filesystem store: cannot write under {self.root} ({exc.strerror}); check the "
                "volume (BUILD_CONTEXT_FS_ROOT) and free space"
            ) from exc

    def _reuse(self, index: FunctionIndex, record: ContextRecord) -> Stored:
        target = os.path.join(index.folder, record.content_hash)
        current = _read(target)
        refreshed = current.refreshed(record.expires_at)
        if refreshed != current:
            _write_atomic(os.path.join(target, RECORD), record_file(refreshed), index.folder)
            _fsync_path(target)
        return self._stored(
            refreshed, reused=True, provenance=os.path.exists(os.path.join(target, PROVENANCE))
        )

    def _create(self, index: FunctionIndex, archive: Archive, record: ContextRecord) -> Stored:
        """Write the files into a temporary folder, fsync them and it at once, log the context,
        rename the folder into place and fsync the function folder (through the index's open
        descriptor): 4 opens, 5 fsyncs, a mkdir and a rename (tests/test_store_syscalls.py)."""
        temp = os.path.join(index.folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(temp)
        fds: list[int] = []
        try:
            files = {ARCHIVE: archive.data, RECORD: record_file(record)}
            if archive.provenance is not None:
                files[PROVENANCE] = archive.provenance
            for name, data in files.items():
                fds.append(_write_new(os.path.join(temp, name), data))
            fds.append(os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            synced, fds = fds, []
            self._sync_and_close(synced)
            index.added(record.content_hash, archive.size_bytes)
            try:
                os.rename(temp, os.path.join(index.folder, record.content_hash))
            except OSError as exc:
                index.forget()
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Stored meanwhile by a writer that keeps no log (an earlier version).
                shutil.rmtree(temp, ignore_errors=True)
                return self._reuse(index, record)
            os.fsync(index.dir_fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return self._stored(record, reused=False, provenance=PROVENANCE in files)

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        return self._read_file(namespace, function, content_hash, ARCHIVE)

    def get_provenance(self, namespace: str, function: str, content_hash: str) -> bytes:
        return self._read_file(namespace, function, content_hash, PROVENANCE)

    def _read_file(self, namespace: str, function: str, content_hash: str, name: str) -> bytes:
        try:
            with open(
                os.path.join(self.folder(namespace, function, content_hash), name), "rb"
            ) as f:
                return f.read()
        except FileNotFoundError:
            raise KeyError((namespace, function, content_hash)) from None

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[Path]]:
        for ns in _subfolders(self.root):
            if namespaces is not None and ns.name not in namespaces:
                continue
            for fn in _subfolders(ns):
                for ctx in _subfolders(fn):
                    try:
                        yield Listed(_read(ctx), ctx)
                    except (OSError, ValueError, KeyError):
                        continue

    def function_contexts(self, namespace: str, function: str) -> Iterator[ContextRecord]:
        for ctx in _subfolders(self.root / namespace / function):
            try:
                yield _read(ctx)
            except (FileNotFoundError, ValueError, KeyError):
                continue  # deleted meanwhile, or not ours

    def function_sizes(self, namespace: str, function: str) -> Iterator[tuple[str, int]]:
        """What this process keeps, brought up to date from the function's change log
        (filesystem_index.py): no `stat` per context. The caps ask just before a put, so the
        function's folder is made here if new."""
        with self._indexes.locked(namespace, function) as index:
            return iter(list(index.stored().items()))

    def delete(self, item: Listed[Path], still_expired: StillExpired) -> Deletion:
        folder = item.handle
        record = item.record
        with self._indexes.locked(record.namespace, record.function) as index:
            try:
                current = _read(folder)
            except FileNotFoundError:
                return Deletion.GONE
            if not still_expired(current):
                return Deletion.KEPT
            trash = os.path.join(index.folder, f"{TEMP_PREFIX}trash-{uuid.uuid4().hex}")
            index.removed(record.content_hash)
            try:
                os.rename(folder, trash)
            except BaseException:
                index.forget()
                raise
        shutil.rmtree(trash, ignore_errors=True)
        return Deletion.DELETED

    def sweep_leftovers(self, older_than: datetime, dry_run: bool) -> Swept:
        """Temporaries of crashed writes and deletes, once last changed before `older_than`."""
        removed = errors = 0
        for path in self.stale_temporaries():
            try:
                if datetime.fromtimestamp(path.lstat().st_mtime, UTC) > older_than:
                    continue
                if not dry_run:
                    _remove(path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError:
                errors += 1
                log.warning(
                    "cleanup: could not remove a leftover temporary",
                    exc_info=True,
                    extra={"store": self.backend, "path": str(path)},
                )
        return Swept(removed, errors)

    def stale_temporaries(self) -> Iterator[Path]:
        """Leftovers of crashed writes (invisible to readers, removed by cleanup)."""
        for ns in _subfolders(self.root):
            for fn in _subfolders(ns):
                yield from (p for p in fn.iterdir() if p.name.startswith(TEMP_PREFIX))


def _subfolders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def record_file(record: ContextRecord) -> bytes:
    """The record file: every field under its wire name (function.record), keys sorted."""
    return json.dumps(records.to_json(record), sort_keys=True, indent=2).encode() + b"\n"


def _read(folder: str | Path) -> ContextRecord:
    with open(os.path.join(folder, RECORD), "rb") as file:
        return records.from_json(json.loads(file.read()))


def _write_new(path: str, data: bytes) -> int:
    """Create `path` with `data` written, and return its open descriptor (for the fsync)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_atomic(path: str, data: bytes, folder: str) -> None:
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}.json")
    fd = _write_new(temp, data)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _fsync_path(path: str) -> None:
    """fsync a file or a folder by path (a folder: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=_ignore_missing)
    else:
        path.unlink(missing_ok=True)


def _ignore_missing(
    function: Callable[..., object],
    path: str,
    exc_info: tuple[type[BaseException], BaseException, object],
) -> None:
    """Another run may be removing the same leftover right now."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
