"""The floor: the least a durable build-context server can do, to measure the function against.

One Flask process under waitress (the same HTTP server and thread count as the function): parse
the JSON body, render a fixed Dockerfile, pack a tar.gz (the function's own tar and gzip code, so
the ratio measures everything else), sha256 it, write the file, fsync the file and its folder,
reply. It validates nothing, checks no syntax, keeps no record, has no telemetry, no lock and
never reuses: never serve it to anyone.

    python -m bench.floor --port 8099 --root /tmp/floor
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import waitress
from flask import Flask, request

from function.archive import canonical_tar, gzip_bytes

DOCKERFILE = """\
FROM python:3.13-slim-bookworm
WORKDIR /app
COPY . .
USER 10001:0
CMD ["python", "remediation.py"]
"""
ENTRY = {"python": "remediation.py", "nodejs": "remediation.js", "go": "remediation.go"}


def create_app(root: Path) -> Flask:
    root.mkdir(parents=True, exist_ok=True)
    app = Flask("floor")

    @app.get("/health/readiness")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/")
    def create() -> Any:
        data: dict[str, Any] = request.get_json(force=True)
        entry = ENTRY.get(str(data.get("runtime")), "remediation.py")
        files = {"Dockerfile": DOCKERFILE.encode(), entry: str(data["sourceCode"]).encode()}
        archive = gzip_bytes(canonical_tar(files))
        digest = hashlib.sha256(archive).hexdigest()
        path = root / f"{digest}.tar.gz"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, archive)
            os.fsync(fd)
        finally:
            os.close(fd)
        folder = os.open(root, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        reply = app.json.response({"archiveSha256": digest, "path": str(path)})
        reply.headers["ce-type"] = "buildcontext.created"
        return reply

    return app


@contextlib.contextmanager
def running(workdir: Path, threads: int = 8, timeout: float = 30) -> Iterator[tuple[str, int]]:
    """The floor server as a subprocess on a free loopback port; yields its URL and pid."""
    from tests.support.server import ROOT, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / f"floor-{port}.log", "wb")  # noqa: SIM115
    command = [sys.executable, "-m", "bench.floor", "--port", str(port), "--threads", str(threads)]
    process = subprocess.Popen(
        [*command, "--root", str(workdir / "floor")],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"floor server exited {process.returncode}")
            try:
                if requests.get(f"{url}/health/readiness", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor server not ready in {timeout}s")
            time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    waitress.serve(
        create_app(args.root),
        host="127.0.0.1",
        port=args.port,
        threads=args.threads,
        connection_limit=500,
        ident="floor",
        _quiet=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
