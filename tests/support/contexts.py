"""Reading what the function stored: examples, archives, their members, and the Dockerfile
linted as a reviewer would."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def assert_is_the_announced_archive(stored: bytes, reply: Mapping[str, Any]) -> None:
    """`stored` (as a builder would fetch it) is the archive the created event announced: its
    sha256, its content hash (of the uncompressed tar) and exactly its files."""
    assert hashlib.sha256(stored).hexdigest() == reply["archiveSha256"]
    assert hashlib.sha256(gzip.decompress(stored)).hexdigest() == reply["contentHash"]
    files = {name for name, member in members(stored).items() if member.isfile()}
    assert files == set(reply["files"])


def extract(archive: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into


def read_member(archive: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        handle = tar.extractfile(name)
        assert handle is not None, name
        return handle.read().decode()


def assert_hadolint_passes(context: Path) -> None:
    """hadolint finds nothing in `context`/Dockerfile, not even a style remark."""
    lint = subprocess.run(
        [HADOLINT, "--no-color", "--format", "json", "--failure-threshold", "style", "Dockerfile"],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert json.loads(lint.stdout or "[]") == [], lint.stdout
    assert lint.returncode == 0, lint.stderr
