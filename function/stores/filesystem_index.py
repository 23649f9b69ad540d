"""What one function holds in the filesystem store, kept per process without rescanning.

The per-function caps ask, on every new context, what the function has stored (content hash ->
archive bytes). Instead of a `stat` of each of its contexts, each process keeps the answer and
brings it up to date under the function's lock from a change log: the lock file (which every
writer opens anyway) holds a header with an epoch, then one line per change, `+<hash> <bytes>`
before a context is renamed into place and `-<hash>` before one is renamed away. A process that
takes the lock reads only the lines it has not seen; a line of another process is checked with
one `stat` of the context's folder, since that process may have been killed between the line and
the rename. A new epoch (first use, a log grown past LOG_LIMIT, an unreadable header) makes every
process rebuild from the folder once; so does a process's first look (docs/stores.md).

The lock file and the function folder stay open per process (a descriptor each, for the flock
and the folder's fsync), so a new context opens neither; a thread lock beside the flock keeps the
threads of one process apart, as one open file shares its flock between them.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

MAGIC = b"build-context function log v1 "
HEADER_LEN = len(MAGIC) + 32 + 1
LOG_LIMIT = 64 * 1024
"""Bytes of change lines after which the next writer starts a new epoch (every process then
rebuilds once): about 800 new contexts."""
LOCK = ".lock"


class FunctionIndex:
    """One function's folder: its lock, its folder's descriptor and its sizes as last seen."""

    def __init__(self, folder: str, archive: str) -> None:
        self.folder = folder
        self.archive = archive
        self.mutex = threading.Lock()
        self.closed = False
        self.dir_fd = _open_folder(folder)
        try:
            self.lock_fd = os.open(
                LOCK, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666, dir_fd=self.dir_fd
            )
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.sizes: dict[str, int] | None = None
        self.epoch = b""
        self.offset = 0

    def close(self) -> None:
        self.closed = True
        os.close(self.lock_fd)
        os.close(self.dir_fd)

    def stored(self) -> dict[str, int]:
        """What the function holds now (under the lock): content hash -> archive bytes."""
        header = os.pread(self.lock_fd, HEADER_LEN, 0)
        if len(header) != HEADER_LEN or not header.startswith(MAGIC):
            self._new_epoch()  # first use, or a lock file an earlier version left empty
            self.sizes = None
        elif header[len(MAGIC) : -1] != self.epoch:
            self.epoch, self.sizes = header[len(MAGIC) : -1], None
        if self.sizes is None:
            self.offset = os.fstat(self.lock_fd).st_size
            self.sizes = dict(self._scan())
        while chunk := os.pread(self.lock_fd, 65536, self.offset):
            complete = chunk[: chunk.rfind(b"\n") + 1]
            if not complete:
                # The tail of a line whose writer was killed mid-write: start afresh, so that
                # no line is ever appended to it.
                self._new_epoch()
                return self.stored()
            self.offset += len(complete)
            for line in complete.decode("ascii", "replace").splitlines():
                self._apply(line)
        return self.sizes

    def added(self, content_hash: str, size: int) -> None:
        """Log a context about to be renamed into place (under the lock, after `stored`)."""
        self._log(f"+{content_hash} {size}\n".encode())
        if self.sizes is not None:
            self.sizes[content_hash] = size

    def removed(self, content_hash: str) -> None:
        """Log a context about to be renamed away (under the lock)."""
        self._log(f"-{content_hash}\n".encode())
        if self.sizes is not None:
            self.sizes.pop(content_hash, None)

    def forget(self) -> None:
        """After a change that may not have happened as logged: rebuild on the next look."""
        self.sizes = None

    def _log(self, line: bytes) -> None:
        if self.sizes is None:
            os.write(self.lock_fd, line)  # not kept by this process: the others read it
            return
        self.stored()  # read to the end first (a delete does not look before): line by line
        if self.offset + len(line) > LOG_LIMIT:
            self._new_epoch()
        os.write(self.lock_fd, line)
        self.offset += len(line)

    def _new_epoch(self) -> None:
        """A fresh log; what this process keeps stays true, every other process rebuilds."""
        self.epoch = uuid.uuid4().hex.encode()
        os.ftruncate(self.lock_fd, 0)
        os.write(self.lock_fd, MAGIC + self.epoch + b"\n")
        self.offset = HEADER_LEN

    def _apply(self, line: str) -> None:
        """Another process's change: true only if it happened (it may have died before)."""
        assert self.sizes is not None
        content_hash, _, size = line[1:].partition(" ")
        if not content_hash or "/" in content_hash or content_hash.startswith("."):
            return
        if os.path.isdir(os.path.join(self.folder, content_hash)):
            if content_hash not in self.sizes:
                self.sizes[content_hash] = int(size) if size.isdigit() else self._size(content_hash)
        else:
            self.sizes.pop(content_hash, None)

    def _size(self, content_hash: str) -> int:
        return os.stat(os.path.join(self.folder, content_hash, self.archive)).st_size

    def _scan(self) -> Iterator[tuple[str, int]]:
        """From the folder names and the archives' sizes: one `stat` per context."""
        with os.scandir(self.folder) as entries:
            for entry in list(entries):
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    yield entry.name, self._size(entry.name)
                except FileNotFoundError:
                    continue  # not a whole context: being deleted, or not ours


def _open_folder(folder: str) -> int:
    """The function folder's descriptor, the folder made on first use only."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(folder, flags)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return os.open(folder, flags)


Seen = tuple[dict[str, int], bytes, int]
"""What a process knew of a function when it closed its descriptors: sizes, epoch, log offset.
Any such snapshot is a valid start: the lines after it are read and checked as anyone's."""


class FunctionIndexes:
    """The open `FunctionIndex` of each function this process writes, at most `limit` of them
    (two descriptors each, beside up to 500 connections); what a closed one knew is remembered
    for `remembered` functions, so that coming back costs two opens, not a rescan. A process
    forked after use opens its own (a shared open file would share its flock)."""

    def __init__(self, root: str, archive: str, limit: int = 64, remembered: int = 4096) -> None:
        self.root = root
        self.archive = archive
        self.limit = limit
        self.remembered = remembered
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], FunctionIndex] = {}
        self._seen: dict[tuple[str, str], Seen] = {}
        self._pid = os.getpid()

    @contextmanager
    def locked(self, namespace: str, function: str) -> Iterator[FunctionIndex]:
        """The function's index, its lock held (by this thread and this process) meanwhile.

        A lock file removed or replaced since it was opened (its folder deleted by hand, say)
        no longer keeps anyone out: the index is then closed and opened afresh."""
        key = (namespace, function)
        while True:
            index = self._get(key)
            with index.mutex:
                if index.closed:
                    continue  # closed by `close` or evicted meanwhile: take a fresh one
                fcntl.flock(index.lock_fd, fcntl.LOCK_EX)
                try:
                    current = os.fstat(index.lock_fd).st_nlink > 0
                    if current:
                        yield index
                finally:
                    fcntl.flock(index.lock_fd, fcntl.LOCK_UN)
                if current:
                    return
                with self._lock:
                    if self._open.get(key) is index:
                        del self._open[key]
                index.close()

    def _get(self, key: tuple[str, str]) -> FunctionIndex:
        with self._lock:
            if self._pid != os.getpid():
                self._open, self._pid = {}, os.getpid()  # the parent's stay the parent's
            index = self._open.pop(key, None)
            if index is None:
                index = FunctionIndex(os.path.join(self.root, *key), self.archive)
                if (seen := self._seen.pop(key, None)) is not None:
                    index.sizes, index.epoch, index.offset = dict(seen[0]), seen[1], seen[2]
            self._open[key] = index  # most recently used last
            evicted = []
            while len(self._open) > self.limit:
                evicted.append(_oldest(self._open))
        for old_key, old in evicted:
            with old.mutex:
                old.close()
                seen = None if old.sizes is None else (old.sizes, old.epoch, old.offset)
            if seen is not None:
                self._remember(old_key, seen)
        return index

    def _remember(self, key: tuple[str, str], seen: Seen) -> None:
        with self._lock:
            self._seen.pop(key, None)
            self._seen[key] = seen
            while len(self._seen) > self.remembered:
                del self._seen[next(iter(self._seen))]

    def close(self) -> None:
        with self._lock:
            indexes, self._open, self._seen = list(self._open.values()), {}, {}
        for index in indexes:
            with index.mutex:
                if not index.closed:
                    index.close()


def _oldest(indexes: dict[tuple[str, str], FunctionIndex]) -> tuple[tuple[str, str], FunctionIndex]:
    key = next(iter(indexes))
    return key, indexes.pop(key)
