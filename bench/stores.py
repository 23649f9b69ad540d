"""The stores the benchmark can run against, each with whatever server it needs.

A backend yields the environment that configures both the function server (a subprocess) and
the in-process service, so both measure the same store the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

Backend = Callable[[Path], contextlib.AbstractContextManager[dict[str, str]]]


@contextlib.contextmanager
def filesystem(workdir: Path) -> Iterator[dict[str, str]]:
    root = workdir / "contexts"
    yield {"BUILD_CONTEXT_STORAGE": "filesystem", "BUILD_CONTEXT_FS_ROOT": str(root)}


@contextlib.contextmanager
def s3(workdir: Path) -> Iterator[dict[str, str]]:
    """A SeaweedFS S3 server on loopback (tests/support/seaweed.py) with a fresh bucket."""
    from tests.support.seaweed import start_seaweed_s3

    seaweed = start_seaweed_s3()
    try:
        seaweed.client().create_bucket(Bucket="bench")
        yield {"BUILD_CONTEXT_STORAGE": "s3", **seaweed.function_env("bench")}
    finally:
        seaweed.stop()


@contextlib.contextmanager
def configmap(workdir: Path) -> Iterator[dict[str, str]]:
    """A kube-apiserver with etcd on loopback (tests/support/kube.py) and a fresh namespace."""
    import kubernetes.client

    from tests.support.kube import KubeAPIServer

    kube = KubeAPIServer()
    kube.start()
    try:
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        core = kubernetes.client.CoreV1Api(kube.api_client())
        core.create_namespace({"metadata": {"name": namespace}})
        yield {"BUILD_CONTEXT_STORAGE": "configmap", **kube.function_env(namespace)}
    finally:
        kube.stop()


@contextlib.contextmanager
def oci(workdir: Path, auth: str = "htpasswd") -> Iterator[dict[str, str]]:
    """A CNCF Distribution registry on loopback (tests/support/registry.py), TLS and basic auth
    (bcrypt checked by the registry on every request), or `auth="token"`: the Bearer flow of
    Docker Hub, Harbor, GHCR and Quay (a token per repository scope, cached by the client)."""
    from tests.support.registry import Registry

    registry = Registry(workdir / "registry", auth=auth).start()
    try:
        config = registry.docker_config(workdir / "docker" / "config.json")
        yield {
            "BUILD_CONTEXT_STORAGE": "oci",
            "BUILD_CONTEXT_OCI_REGISTRY": registry.host,
            "BUILD_CONTEXT_OCI_DOCKER_CONFIG": str(config),
            "BUILD_CONTEXT_OCI_CA_FILE": str(registry.ca_path),
        }
    finally:
        registry.stop()


def oci_token(workdir: Path) -> contextlib.AbstractContextManager[dict[str, str]]:
    return oci(workdir, auth="token")


BACKENDS: dict[str, Backend] = {
    "filesystem": filesystem,
    "s3": s3,
    "configmap": configmap,
    "oci": oci,
    "oci-token": oci_token,
}


def available() -> list[str]:
    return list(BACKENDS)


@contextlib.contextmanager
def opened(name: str) -> Iterator[tuple[dict[str, str], Path]]:
    """The store's environment and a scratch folder, both gone afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        with BACKENDS[name](workdir) as env:
            yield env, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` set in this process for the in-process service, then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
