"""The floor: the least a durable build-context server can do, to measure the function against.

One Flask process under waitress (the same HTTP server and thread count as the function): parse
the JSON body, render a fixed Dockerfile, pack a tar.gz (the function's own tar and gzip code, so
the ratio measures everything else), sha256 it, write the file, fsync the file and its folder,
reply. It validates nothing, checks no syntax, keeps no record, has no telemetry, no lock and
never reuses: never serve it to anyone.

With `--check` it is the second floor: it also runs the function's own exact syntax check of the
source (`Runtime.source_errors`: CPython's compiler, the tree-sitter grammars) before it packs,
and answers a syntax error with 400: the least a server that keeps our promises does.

    python -m bench.floor --port 8099 --root /tmp/floor [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import socket
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
from function.runtimes import resolve

DOCKERFILE = """\
FROM python:3.13-slim-bookworm
WORKDIR /app
COPY . .
USER 10001:0
CMD ["python", "remediation.py"]
"""
ENTRY = {"python": "remediation.py", "nodejs": "remediation.js", "go": "remediation.go"}


def create_app(root: Path, check: bool = False) -> Flask:
    root.mkdir(parents=True, exist_ok=True)
    app = Flask("floor")

    @app.get("/health/readiness")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/")
    def create() -> Any:
        data: dict[str, Any] = request.get_json(force=True)
        entry = ENTRY.get(str(data.get("runtime")), "remediation.py")
        if check:
            runtime, version = resolve(str(data.get("runtime")), data.get("runtimeVersion"))
            errors = runtime.source_errors({entry: str(data["sourceCode"])}, version)
            if errors:
                return {"reason": "InvalidSource", "message": errors[0].message}, 400
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
def running(
    workdir: Path, threads: int = 8, timeout: float = 30, check: bool = False, processes: int = 1
) -> Iterator[tuple[str, int]]:
    """The floor server (`check`: the second floor) as a subprocess on a free loopback port;
    yields its URL and pid (the parent of `processes` servers, when more than one)."""
    from tests.support.processes import stop_process
    from tests.support.server import ROOT, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / f"floor-{port}.log", "wb")  # noqa: SIM115
    command = [sys.executable, "-m", "bench.floor", "--port", str(port), "--threads", str(threads)]
    command += ["--processes", str(processes)]
    folder = workdir / ("floor-checked" if check else "floor")
    process = subprocess.Popen(
        [*command, "--root", str(folder), *(["--check"] if check else [])],
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
        stop_process(process)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--check", action="store_true", help="also check the source's syntax")
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes on one listening socket"
    )
    args = parser.parse_args(argv)
    options: dict[str, Any] = {
        "threads": args.threads,
        "connection_limit": 500,
        "ident": "floor",
        "_quiet": True,
    }
    app = create_app(args.root, args.check)
    if args.processes <= 1:
        waitress.serve(app, host="127.0.0.1", port=args.port, **options)
        return 0
    # As the function does (function/workers.py), in a few lines: the syntax checks are CPU
    # bound, so a floor that keeps our promises gets every core too.
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            waitress.serve(app, sockets=[listener], **options)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
