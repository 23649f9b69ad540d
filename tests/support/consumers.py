"""The real readers of what we render: npm's spec parser, pip's requirements-file reader and
the go command. A validator may accept only what these read back as the same thing."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NPM_PACKAGE_ARG = "13.0.2"
"""The npm-package-arg that npm 11 (Node.js 24's npm) bundles."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "build-context"

_NPA_SCRIPT = r"""
const npa = require("npm-package-arg");
const pairs = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = pairs.map(([name, spec]) => {
  try {
    const r = npa.resolve(name, spec);
    return {type: r.type, name: r.name, rawSpec: r.rawSpec, fetchSpec: r.fetchSpec};
  } catch (e) {
    return {error: String(e.code || e.message)};
  }
});
process.stdout.write(JSON.stringify(out));
"""


def npm_package_arg_dir() -> Path:
    """node_modules holding npm-package-arg, installed once with npm into the shared cache."""
    root = CACHE / "npm-package-arg" / NPM_PACKAGE_ARG
    modules = root / "node_modules"
    if (modules / "npm-package-arg" / "package.json").exists():
        return modules
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (modules / "npm-package-arg" / "package.json").exists():
            return modules
        work = Path(tempfile.mkdtemp(dir=root.parent, prefix=".install-"))
        try:
            subprocess.run(
                [
                    "npm",
                    "install",
                    "--prefix",
                    str(work),
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--no-package-lock",
                    f"npm-package-arg@{NPM_PACKAGE_ARG}",
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
            shutil.rmtree(root, ignore_errors=True)
            work.rename(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return modules


def npm_reads(pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """npa.resolve(name, spec) for each dependency, as npm reads package.json."""
    result = subprocess.run(
        ["node", "-e", _NPA_SCRIPT],
        input=json.dumps(list(pairs)),
        env={**os.environ, "NODE_PATH": str(npm_package_arg_dir())},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reads: list[dict[str, Any]] = json.loads(result.stdout)
    return reads


def pip_reads(requirements_txt: str) -> list[str]:
    """The requirement strings pip's own requirements-file reader finds in the file."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requirements.txt"
        path.write_text(requirements_txt, encoding="utf-8")
        return [r.requirement for r in parse_requirements(str(path), session=PipSession())]


def go_mod_reads(go_mod: str) -> list[tuple[str, str]]:
    """The requirements `go mod edit -json` reads from a go.mod (it refuses a bad one)."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "go.mod").write_text(go_mod)
        result = subprocess.run(
            ["go", "mod", "edit", "-json"],
            cwd=folder,
            env={**os.environ, "GOWORK": "off", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    if result.returncode != 0:
        raise ValueError(result.stderr.strip())
    data = json.loads(result.stdout)
    return [(r["Path"], r["Version"]) for r in data.get("Require") or []]


def python_compiles(source: bytes) -> bool:
    """Whether the serving CPython compiles the file's bytes as `python file.py` reads them."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "remediation.py"
        path.write_bytes(source)
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')",
                str(path),
            ],
            capture_output=True,
            timeout=60,
        )
    return result.returncode == 0


def python_for(version: str) -> str | None:
    """An interpreter of `version` (a minor, '3.12') with pip, from PATH or pyenv; None if this
    machine has none. pip evaluates markers against the interpreter it runs in."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(
        str(p) for p in (Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/python")
    )
    for candidate in filter(None, candidates):
        result = subprocess.run(
            [candidate, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode == 0 and result.stdout.strip() == version:
            return candidate
    return None


def local_wheel(folder: Path, name: str, version: str) -> str:
    """A minimal pure-Python wheel of `name` `version` in `folder` (pip reads it like any
    other); its sha256, as a lock's --hash names it."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256="
        f"{base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in sorted(files.items()):
            wheel.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip_would_install(python: str, requirements_txt: str, wheels: Path) -> list[str]:
    """The names pip (of `python`) installs from a requirements file as the locked Dockerfile
    runs it (--require-hashes --no-deps), offline from `wheels`: a dry run with its report."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requirements.txt"
        path.write_text(requirements_txt, encoding="utf-8")
        result = subprocess.run(
            [
                *(python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-"),
                *("--no-index", "--find-links", str(wheels), "--require-hashes", "--no-deps"),
                *("--disable-pip-version-check", "--no-cache-dir", "-r", str(path)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    report: dict[str, Any] = json.loads(result.stdout)
    return sorted(item["metadata"]["name"] for item in report["install"])
