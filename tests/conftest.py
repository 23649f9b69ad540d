from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kube import KubeAPIServer
from tests.support.registry import Registry
from tests.support.seaweed import SeaweedS3, start_seaweed_s3
from tests.support.server import FunctionServer
from tests.support.telemetry import OtlpReceiver

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


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP endpoint on loopback that keeps what the exporters send."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole run (starting takes seconds, stopping ~5 s)."""
    instance = start_seaweed_s3()
    yield instance
    instance.stop()


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    """A new, empty bucket on the shared SeaweedFS server."""
    name = f"ctx-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeAPIServer]:
    """One real kube-apiserver (with etcd, RBAC on) for the whole run; tests use fresh
    namespaces, since nothing ever finalizes a deleted one."""
    server = KubeAPIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(
    params=[
        pytest.param("filesystem"),
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("configmap", marks=pytest.mark.kube),
    ]
)
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment that points a function server at a new, empty store, once per backend:
    a folder, a bucket on the shared SeaweedFS server, a namespace on the shared apiserver."""
    if request.param == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        return {
            "BUILD_CONTEXT_STORAGE": "s3",
            **seaweed.function_env(request.getfixturevalue("bucket")),
        }
    if request.param == "configmap":
        kube: KubeAPIServer = request.getfixturevalue("kube")
        namespace = kube.new_namespace("store")
        return {"BUILD_CONTEXT_STORAGE": "configmap", **kube.function_env(namespace)}
    return {"BUILD_CONTEXT_STORAGE": "filesystem", "BUILD_CONTEXT_FS_ROOT": str(tmp_path / "fs")}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One CNCF Distribution registry (TLS from a test CA, htpasswd auth, deletes on) for the
    whole run; tests use repositories of their own."""
    instance = Registry(tmp_path_factory.mktemp("registry")).start()
    yield instance
    instance.stop()
