"""Reproducible tar.gz: the bytes depend on the files' paths and contents only."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

# 1980-01-01: a fixed, plausible time (some tools reject 0) in every entry.
MTIME = 315532800
COMPRESSION_LEVEL = 6
# gzip header with no name, no mtime, no flags, and OS "unknown": written by hand because
# Python's gzip module has changed these bytes between releases.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True)
class Archive:
    data: bytes
    content_hash: str
    """sha256 of the uncompressed tar: independent of the zlib version."""
    archive_sha256: str
    files: tuple[str, ...]
    provenance: bytes | None = None
    """The DSSE envelope of the signed provenance (function.provenance); every store keeps it
    next to the archive, and cleanup deletes it with the archive."""

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    @property
    def image_tag(self) -> str:
        return image_tag(self.content_hash)


def image_tag(content_hash: str) -> str:
    return f"sha256-{content_hash[:24]}"


def canonical_tar(files: Mapping[str, bytes]) -> bytes:
    """USTAR, sorted entries with their parent folders, root-owned, 0644/0755, fixed mtime.

    Headers are packed here rather than by `tarfile` (6x faster for a small context), with the
    very bytes `tarfile` writes; a name over 100 bytes, which USTAR splits, goes to `tarfile`.
    """
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    names = sorted([*folders, *files])
    if any(len(name.encode("utf-8")) >= _NAME_FIELD for name in names):
        return _tarfile_tar(files, names)
    parts = []
    for name in names:
        data = files.get(name)
        if data is None:
            parts.append(_ustar_header(f"{name}/".encode(), 0o755, 0, tarfile.DIRTYPE))
            continue
        parts.append(_ustar_header(name.encode("utf-8"), 0o644, len(data), tarfile.REGTYPE))
        parts.append(data)
        parts.append(bytes(-len(data) % tarfile.BLOCKSIZE))
    parts.append(bytes(2 * tarfile.BLOCKSIZE))
    size = sum(map(len, parts))
    parts.append(bytes(-size % tarfile.RECORDSIZE))
    return b"".join(parts)


_NAME_FIELD = 100


def _ustar_header(name: bytes, mode: int, size: int, kind: bytes) -> bytes:
    block = b"".join(
        [
            name.ljust(_NAME_FIELD, b"\0"),
            b"%07o\0" % mode,
            b"0000000\0" * 2,
            b"%011o\0%011o\0" % (size, MTIME),
            b" " * 8,
            kind,
            bytes(100),
            tarfile.POSIX_MAGIC,
            bytes(32 + 32 + 8 + 8 + 155 + 12),
        ]
    )
    return block[:148] + b"%06o\0" % sum(block) + block[155:]


def _tarfile_tar(files: Mapping[str, bytes], names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in files:
                info.mode = 0o644
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
    return buffer.getvalue()


def gzip_bytes(data: bytes, level: int = COMPRESSION_LEVEL) -> bytes:
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + body + trailer


def build(files: Mapping[str, str]) -> Archive:
    return build_encoded({path: text.encode("utf-8") for path, text in files.items()})


def build_encoded(encoded: Mapping[str, bytes]) -> Archive:
    """`build` for files already encoded as UTF-8 (the create use case also hashes them for
    the provenance statement, from the same bytes)."""
    tar = canonical_tar(encoded)
    data = gzip_bytes(tar)
    return Archive(
        data=data,
        content_hash=hashlib.sha256(tar).hexdigest(),
        archive_sha256=hashlib.sha256(data).hexdigest(),
        files=tuple(sorted(encoded)),
    )
