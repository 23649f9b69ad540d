"""The real function server, started as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Reply:
    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self.type = self.headers.get("ce-type")
        self.subject = self.headers.get("ce-subject")
        try:
            self.data: Any = response.json()
        except ValueError:
            self.data = response.text

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.type}, {self.data!r})"


class FunctionServer:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "BUILD_CONTEXT_HOST": "127.0.0.1",
            "BUILD_CONTEXT_FS_ROOT": str(workdir / "contexts"),
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self, timeout: float = 30) -> FunctionServer:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "function", "serve"],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/health/readiness", timeout=1).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.1)  # not listening yet, or too slow to answer on a loaded machine
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.session.close()
        return self.process.returncode

    def send(
        self,
        data: Any,
        *,
        type: str = "remediation.buildcontext.requested",
        id: str | None = None,
        structured: bool = False,
        extensions: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Reply:
        headers, body = encode(data, type=type, id=id, structured=structured, extensions=extensions)
        return Reply(self.session.post(self.url, headers=headers, data=body, timeout=timeout))


def encode(
    data: Any,
    *,
    type: str = "remediation.buildcontext.requested",
    id: str | None = None,
    structured: bool = False,
    extensions: dict[str, str] | None = None,
) -> tuple[dict[str, str], bytes]:
    """A CloudEvent from the test agent, as HTTP headers and body (binary or structured)."""
    attributes = {
        "type": type,
        "source": "/tests/agent-sre",
        "id": id or str(uuid.uuid4()),
        "datacontenttype": "application/json",
        **(extensions or {}),
    }
    headers, body = (to_structured if structured else to_binary)(CloudEvent(attributes, data))
    return dict(headers), body
