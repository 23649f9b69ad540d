"""Reproducible tar.gz: the bytes depend on the files' paths and contents only."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .boundary import quote
from .errors import InternalError

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


MAX_PATH_BYTES = 100
"""USTAR's name field: the longest path a context holds (BUILD_CONTEXT_MAX_PATH_LENGTH may
only lower it)."""
_PATH_PART = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*")
GENERATED_DOTFILES = frozenset({".dockerignore"})
"""The only names starting with '.' a context holds: ones build-context writes itself (a
caller's file by that name clashes with ours and is refused)."""


def path_problem(path: str, max_bytes: int = MAX_PATH_BYTES) -> str | None:
    """Why `path` cannot name a file in a context, or None: the one rule for the request's
    paths, the packer and `verify`. Only ASCII letters, digits and `._@+-` in parts, so no two
    Unicode spellings (NFC/NFD) of a name exist, and case folding is ASCII's."""
    if not path:
        return "is empty"
    if path in GENERATED_DOTFILES:
        return None
    if len(path.encode("utf-8", "surrogateescape")) > max_bytes:
        return f"is longer than {max_bytes} bytes (BUILD_CONTEXT_MAX_PATH_LENGTH)"
    return _form_problem(path) or _part_problem(path)


def _form_problem(path: str) -> str | None:
    """A form that a filesystem or a tar reader takes for another path, or none."""
    if "\\" in path:
        return "contains a backslash; use '/' between folders"
    if path.startswith("/"):
        return "is absolute; give a path relative to the context root"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a control character"
    if posixpath.normpath(path) != path or ".." in path.split("/"):
        return "is not normalised (no '..', '.', '//' or trailing '/')"
    return None


def _part_problem(path: str) -> str | None:
    bad = next((p for p in path.split("/") if _PATH_PART.fullmatch(p) is None), None)
    if bad is not None:
        return (
            f"has the part {quote(bad)}: use letters, digits, '.', '_', '-', '@', '+' "
            "(not starting with '.')"
        )
    return None


@dataclass
class _Node:
    spelling: str
    owner: str
    """The first path that made this node: named in a conflict."""
    file: bool
    listed: bool
    """A folder with its own entry (a tar's), not only the parent of a file."""
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class Conflict:
    """Two paths a builder's filesystem cannot hold as given: the same name (after ASCII case
    folding, as on macOS/Windows filesystems), or one a file and the other under it."""

    first: str
    second: str
    problem: str


def tree_conflicts(files: Iterable[str], folders: Iterable[str] = ()) -> list[Conflict]:
    """Every path that clashes with one before it, in order: a trie of case-folded parts, so
    the cost is linear in the paths' length whatever their depth. `folders` are folder entries
    of their own (a tar's); one listed twice is a name twice."""
    root = _Node("", "", file=False, listed=False)
    conflicts = []
    entries = [(path, False) for path in folders] + [(path, True) for path in files]
    for path, is_file in entries:
        node, parts = root, path.split("/")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            child = node.children.get(part.lower())
            if child is None:
                child = _Node(part, path, file=last and is_file, listed=last)
                node.children[part.lower()] = child
            elif problem := _clash(child, parts[: depth + 1], last and is_file, last):
                conflicts.append(Conflict(child.owner, path, problem))
                break
            child.listed = child.listed or last
            node = child
    return conflicts


def _clash(seen: _Node, parts: list[str], file: bool, last: bool) -> str | None:
    part = parts[-1]
    if seen.spelling != part:
        return (
            f"spell one name two ways, {quote(seen.spelling)} and {quote(part)}, which a "
            "case-insensitive filesystem (macOS, Windows) takes for one"
        )
    if last and seen.file == file and (seen.file or seen.listed):
        return "are the same name twice"
    if seen.file or file:
        return f"make {quote('/'.join(parts))} both a file and a folder"
    return None


def check_tree(files: Iterable[str], folders: Iterable[str] = ()) -> None:
    """The packer's own guard (a caller checks first, with a caller's error): an archive that
    names a path twice or puts a file under a file means what the unpacking tar decides."""
    files = list(files)
    bad = next(((p, why) for p in [*folders, *files] if (why := path_problem(p))), None)
    if bad is not None:
        raise InternalError(f"refusing to pack the path {quote(bad[0])}: it {bad[1]}")
    for conflict in tree_conflicts(files, folders)[:1]:
        raise InternalError(
            f"refusing to pack {quote(conflict.first)} and {quote(conflict.second)}: "
            f"they {conflict.problem}"
        )


def canonical_tar(files: Mapping[str, bytes]) -> bytes:
    """USTAR, sorted entries with their parent folders, root-owned, 0644/0755, fixed mtime.

    Headers are packed here rather than by `tarfile` (6x faster for a small context), with the
    very bytes `tarfile` writes; a name over 100 bytes, which USTAR splits, goes to `tarfile`.
    """
    check_tree(files)
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
