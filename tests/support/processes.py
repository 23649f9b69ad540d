"""What the helpers that run a real server as a child process share: where its binaries are,
which loopback ports are free, and how it is stopped."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def built_bin_dir(env_var: str, script: str) -> Path:
    """The directory named by ``env_var``, or the one ``scripts/<script>`` builds (or finds in
    its cache) and prints last."""
    if env_dir := os.environ.get(env_var):
        return Path(env_dir)
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / script)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free when asked (all held at once)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; reaped either way."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
