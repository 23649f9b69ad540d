"""The hand-packed USTAR is byte for byte what `tarfile` writes, so content hashes never move;
and no archive names a path twice or puts a file under a file (refused to the caller, through
the real HTTP server, and by the packer itself)."""

from __future__ import annotations

import io
import random
import string
import tarfile

import pytest

from function.archive import _tarfile_tar, build, build_encoded, canonical_tar, tree_conflicts
from function.errors import InternalError
from tests.support.server import FunctionServer

_FIRST = string.ascii_letters + string.digits
_REST = _FIRST + "._-@+"


def _folders(files: dict[str, bytes]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def _random_files(rng: random.Random) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for _ in range(rng.randint(1, 6)):
        parts = [
            rng.choice(_FIRST) + "".join(rng.choices(_REST, k=rng.randint(0, 40)))
            for _ in range(rng.randint(1, 4))
        ]
        path = "/".join(parts)[: rng.choice([60, 98, 99, 100])].rstrip("/.")
        if path and "//" not in path and not tree_conflicts([*files, path]):
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


# --- archives that mean one thing (docs/security.md, Ambiguous archives) --------------------

TREES = [
    ({"lib": "X = 1\n", "lib/util.py": "X = 1\n"}, "lib/util.py", "lib"),
    ({"Dockerfile/notes.py": "X = 1\n"}, "Dockerfile/notes.py", "Dockerfile"),
    ({"requirements.txt/extra.py": "X = 1\n"}, "requirements.txt/extra.py", "requirements.txt"),
    ({"remediation.py/helper.py": "X = 1\n"}, "remediation.py/helper.py", "remediation.py"),
    ({"Lib/a.py": "A = 1\n", "lib/b.py": "B = 1\n"}, "lib/b.py", "Lib/a.py"),
    ({"util.py": "A = 1\n", "UTIL.py": "B = 1\n"}, "util.py", "UTIL.py"),
    ({"dockerfile/x.py": "X = 1\n"}, "dockerfile/x.py", "Dockerfile"),
]


@pytest.mark.parametrize(("files", "second", "first"), TREES)
def test_a_path_both_file_and_folder_or_twice_by_case_is_refused_naming_both(
    server: FunctionServer, files: dict[str, str], second: str, first: str
) -> None:
    reply = server.send({"lambdaFunction": "fix", "sourceCode": "print(1)\n", "files": files})
    assert reply.type == "buildcontext.failed", reply.data
    assert reply.data["reason"] == "InvalidSource"
    (error,) = reply.data["errors"]
    assert repr(first) in error["message"] and repr(second) in error["message"], error
    assert error["field"] == f"files.{second}" and error["file"] == second
    assert "rename one of them" in error["message"]


def test_the_generated_names_come_from_what_each_runtime_renders(server: FunctionServer) -> None:
    """go.mod (Go) and package.json (Node.js) clash as folders too: the list is the runtime's
    rendered files, not a copy of them here."""
    for runtime, source, generated in (
        ("go", "package main\n\nfunc main() {}\n", "go.mod"),
        ("nodejs", "console.log(1);\n", "package.json"),
    ):
        reply = server.send(
            {
                "lambdaFunction": "fix",
                "runtime": runtime,
                "sourceCode": source,
                "files": {f"{generated}/x.txt": "x\n"},
            }
        )
        assert reply.data["reason"] == "InvalidSource", reply.data
        assert f"{generated!r}, which build-context generates" in reply.data["message"]


@pytest.mark.parametrize(
    "files",
    [
        {"lib": b"1", "lib/util.py": b"2"},
        {"a/b/c": b"1", "a/b": b"2"},
        {"util.py": b"1", "UTIL.py": b"2"},
        {"../evil.sh": b"1"},
        {"/etc/cron.d/evil": b"1"},
        {"a//b": b"1"},
        {"./a": b"1"},
        {"a/": b"1"},
        {"x" * 101: b"1"},
    ],
)
def test_the_packer_itself_refuses_an_ambiguous_or_unsafe_archive(files: dict[str, bytes]) -> None:
    with pytest.raises(InternalError, match="refusing to pack"):
        canonical_tar(files)
    with pytest.raises(InternalError, match="refusing to pack"):
        build_encoded(files)
