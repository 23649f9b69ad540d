"""The hand-packed USTAR is byte for byte what `tarfile` writes, so content hashes never move."""

from __future__ import annotations

import io
import random
import string
import tarfile

from function.archive import _tarfile_tar, build, canonical_tar

_FIRST = string.ascii_letters + string.digits
_REST = _FIRST + "._-@+"


def _folders(files: dict[str, bytes]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def _random_files(rng: random.Random) -> dict[str, bytes]:
    files = {}
    for _ in range(rng.randint(1, 6)):
        parts = [
            rng.choice(_FIRST) + "".join(rng.choices(_REST, k=rng.randint(0, 40)))
            for _ in range(rng.randint(1, 4))
        ]
        path = "/".join(parts)[: rng.choice([60, 98, 99, 100])].rstrip("/.")
        if path and "//" not in path:
            size = rng.choice([0, 1, 511, 512, 513, 4000])
            files[path] = rng.randbytes(size)
    return files


def test_packed_headers_equal_tarfile() -> None:
    rng = random.Random(20260301)
    for _ in range(400):
        files = _random_files(rng)
        names = sorted([*_folders(files), *files])
        assert canonical_tar(files) == _tarfile_tar(files, names), sorted(files)


def test_packed_archive_reads_back_with_its_folders() -> None:
    files = {"remediation.py": "print(1)\n", "lib/util/helpers.py": "X = 1\n", "Dockerfile": ""}
    archive = build(files)
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            "Dockerfile",
            "lib",
            "lib/util",
            "lib/util/helpers.py",
            "remediation.py",
        ]
        assert members["lib"].isdir() and members["lib"].mode == 0o755
        assert members["remediation.py"].mode == 0o644
        assert {m.mtime for m in members.values()} == {315532800}
        helpers = tar.extractfile("lib/util/helpers.py")
        assert helpers is not None and helpers.read() == b"X = 1\n"
