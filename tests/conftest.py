from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import FunctionServer

StartServer = Callable[..., FunctionServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start real function servers (subprocesses); all are stopped at the end of the test."""
    started: list[FunctionServer] = []

    def start(**env: str) -> FunctionServer:
        server = FunctionServer(env, tmp_path).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> FunctionServer:
    """A server on the embedded default: the filesystem store in a temporary folder."""
    return start_server()
