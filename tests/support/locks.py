"""Lock files made by the real tools, as a caller makes them: pip (download, then `pip hash`),
npm (`npm install --package-lock-only`) and go (`go mod download -json`); and one digest in
each changed, as a tampered registry or lock would have it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.utils import parse_wheel_filename


def pip_lock(requirement: str, folder: Path) -> str:
    """requirements.txt in hash-checking mode for `requirement` and what it pulls in: the wheels
    pip resolves for this interpreter and platform (the image's), each hashed by `pip hash`."""
    wheels = folder / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "download", "-q", "--only-binary=:all:", "-d", str(wheels), requirement],
        check=True,
        timeout=300,
    )
    lines = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version, *_ = parse_wheel_filename(wheel.name)
        hashed = subprocess.run(
            [*pip, "hash", str(wheel)], capture_output=True, text=True, check=True
        ).stdout
        digest = re.search(r"--hash=(sha256:[0-9a-f]{64})", hashed)
        assert digest, hashed
        lines.append(f"{name}=={version} \\\n    --hash={digest[1]}\n")
    return "".join(lines)


def npm_lock(dependencies: Mapping[str, str], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(json.dumps({"dependencies": dependencies}))
    subprocess.run(
        ["npm", "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=folder,
        env={**os.environ, "npm_config_cache": str(folder / "npm-cache")},
        check=True,
        capture_output=True,
        timeout=300,
    )
    lock: dict[str, Any] = json.loads((folder / "package-lock.json").read_text())
    return lock


def go_sum(module: str, version: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=folder,
            env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    )
    return f"{module} {version} {info['Sum']}\n{module} {version}/go.mod {info['GoModSum']}\n"


def changed(digest: str) -> str:
    """The same digest with one base64 or hex character changed (its padding kept)."""
    body = digest.rstrip("=")
    position = len(body) - 2
    swap = "b" if body[position] != "b" else "c"
    return body[:position] + swap + body[position + 1 :] + digest[len(body) :]
