"""Reading an untrusted context archive: one bounded gzip stream, and a tar of plain USTAR
entries only (regular files and folders with safe names, no header that renames or extends an
entry, no name twice, no file under a file), so that every tar implementation a builder may use
unpacks the same files."""

from __future__ import annotations

import io
import tarfile
import zlib

from . import archive as archives
from .boundary import quote
from .refusals import MalformedArchive, UnsafeEntry

MAX_UNPACKED_BYTES = 256 * 1024 * 1024
"""What the archive may inflate to: a gzip bomb stops here, with the memory this costs."""


def inflate(archive_bytes: bytes) -> bytes:
    """One gzip member and nothing after it (a second member would be read by some tar
    readers and not others), inflated to at most MAX_UNPACKED_BYTES."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        tar = inflate.decompress(archive_bytes, MAX_UNPACKED_BYTES)
    except zlib.error:
        raise MalformedArchive("the archive is not gzip") from None
    if inflate.unconsumed_tail:
        raise MalformedArchive(f"the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    if not inflate.eof:
        raise MalformedArchive("the archive is truncated (its gzip stream does not end)")
    if inflate.unused_data:
        raise MalformedArchive("the archive has bytes after its gzip stream")
    return tar


_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def members(tar: bytes) -> dict[str, bytes]:
    """The files of a tar of plain USTAR entries only: regular files and folders with safe,
    normalised names, each header right after the previous entry (no pax or GNU header that
    renames or extends one), and no name twice or file under a file."""
    files: dict[str, bytes] = {}
    names: list[str] = []
    folders: list[str] = []
    offset = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            if archive.pax_headers:
                raise UnsafeEntry("the archive carries a pax global header")
            for member in archive:
                _check_entry(member, offset)
                # where tarfile reads the next header: after the data of a file only
                offset = member.offset_data + (_blocks(member.size) if member.isreg() else 0)
                if member.isdir():
                    folders.append(member.name)
                    continue
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - a REGTYPE member always has one
                    raise UnsafeEntry(f"the entry {quote(member.name)} has no content")
                names.append(member.name)
                files[member.name] = handle.read()
    except (tarfile.TarError, EOFError, ValueError, OverflowError):
        raise MalformedArchive("the archive is not a tar") from None
    for conflict in archives.tree_conflicts(names, folders)[:1]:
        raise UnsafeEntry(
            f"the entries {quote(conflict.first)} and {quote(conflict.second)} {conflict.problem}"
        )
    return files


def _blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _check_entry(member: tarfile.TarInfo, offset: int) -> None:
    name = quote(member.name)
    if member.type in _KINDS:
        raise UnsafeEntry(f"the entry {name} is {_KINDS[member.type]}")
    if member.type not in (tarfile.REGTYPE, tarfile.DIRTYPE):
        raise UnsafeEntry(f"the entry {name} is of tar type {member.type!r}, not a file or folder")
    if (
        member.pax_headers
        or member.offset != offset
        or member.offset_data != offset + tarfile.BLOCKSIZE
    ):
        raise UnsafeEntry(f"the entry {name} comes with a pax or GNU header (it may rename it)")
    if problem := archives.path_problem(member.name):
        raise UnsafeEntry(f"the entry {name} {problem}")
