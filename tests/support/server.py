"""The real function server, started as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from tests.support.polling import poll_until

ROOT = Path(__file__).resolve().parents[2]
PING = "dev.knative.sources.ping"
"""The event type of a Knative PingSource: what starts a cleanup."""


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

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            return self._serving() and requests.get(f"{self.url}/health/readiness", timeout=2).ok

        # A connection refused (not bound yet), a read timeout (bound, workers still starting,
        # or a busy machine) or a reset all mean "not yet"; only the deadline or an exit ends it.
        # With several processes, one worker answers readiness before its siblings have
        # started: wait for the supervisor's own "serving" line too, or a test that kills a
        # worker may kill one the supervisor must count as unable to start.
        if poll_until(ready, timeout, transient=(requests.RequestException,)):
            return self
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def _serving(self) -> bool:
        """The process we started logged `serving`: every worker (if any) accepts requests.
        Above log level INFO there is no such line, and readiness alone has to do."""
        if self.env.get("BUILD_CONTEXT_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
            return True
        return any(
            line.get("message") == "serving" and "worker" not in line for line in self.log_lines()
        )

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
        token: str | None = None,
    ) -> Reply:
        """`token`: sent as `Authorization: Bearer <token>`, as Knative Eventing does with
        sender identity on."""
        headers, body = encode(data, type=type, id=id, structured=structured, extensions=extensions)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
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


def break_storage(server: FunctionServer) -> None:
    """A storage outage: the store's root folder becomes a file."""
    root = Path(server.env["BUILD_CONTEXT_FS_ROOT"])
    shutil.rmtree(root)
    root.write_text("not a folder any more")
