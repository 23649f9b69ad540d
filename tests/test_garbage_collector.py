"""Owner references against Kubernetes' real garbage collector: kube-controller-manager, built
from the same Kubernetes module as the test apiserver (scripts/kube-binaries), runs only its
garbagecollector controller. One request's owner, mistaken or hostile, must never get a
context that another request shares deleted."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.conftest import StartServer
from tests.support.kube import KubeAPIServer
from tests.support.processes import stop_process

pytestmark = pytest.mark.kube
DEADLINE = 90.0


@pytest.fixture(scope="module")
def garbage_collector(
    kube: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    binary = Path(str(kube.bin_dir)) / "kube-controller-manager"
    assert binary.exists(), f"{binary} missing: run scripts/kube-binaries"
    assert kube.kubeconfig_path is not None
    log = tmp_path_factory.mktemp("kcm") / "kube-controller-manager.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                f"--kubeconfig={kube.kubeconfig_path}",
                "--controllers=garbagecollector",
                "--leader-elect=false",
                "--secure-port=0",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        stop_process(process, timeout=15)


@pytest.fixture(scope="module")
def admin(kube: KubeAPIServer) -> Iterator[kubernetes.client.CoreV1Api]:
    with kube.api_client() as client:
        yield kubernetes.client.CoreV1Api(client)


def exists(admin: kubernetes.client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        admin.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.2)


def owner_of(obj: kubernetes.client.V1ConfigMap) -> dict[str, str]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": obj.metadata.name,
        "uid": obj.metadata.uid,
    }


def test_a_hostile_owner_cannot_get_a_shared_context_collected(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    garbage_collector: None,
    start_server: StartServer,
) -> None:
    namespace = f"gc-{uuid.uuid4().hex[:10]}"
    admin.create_namespace({"metadata": {"name": namespace}})
    server = start_server(
        BUILD_CONTEXT_STORAGE="configmap",
        **kube.function_env(namespace),
        BUILD_CONTEXT_RETRY_ATTEMPTS="2",
        BUILD_CONTEXT_RETRY_BASE_DELAY_SECONDS="0.01",
    )
    # Real owners: ConfigMaps standing in for the LambdaFunctions (the GC resolves any kind).
    first = admin.create_namespaced_config_map(namespace, {"metadata": {"name": "first-fn"}})
    alone = admin.create_namespaced_config_map(namespace, {"metadata": {"name": "alone-fn"}})
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": str(uuid.uuid4())}
    shared_request = {"lambdaFunction": "fix", "sourceCode": "print('shared')\n"}
    alone_request = {"lambdaFunction": "fix", "sourceCode": "print('alone')\n"}

    created = server.send({**shared_request, "owner": owner_of(first)})
    reused = server.send({**shared_request, "owner": ghost})
    owned = server.send({**alone_request, "owner": owner_of(alone)})
    for reply in (created, reused, owned):
        assert reply.type == "buildcontext.created", reply
    assert reused.data["reused"]
    shared = created.data["storage"]["configMap"]

    # The function gave the singly owned context its owner's reference, and only that one.
    owned_name = owned.data["storage"]["configMap"]
    references = admin.read_namespaced_config_map(owned_name, namespace).metadata.owner_references
    assert [(r.kind, r.name, r.uid) for r in references] == [
        ("ConfigMap", "alone-fn", alone.metadata.uid)
    ]

    # The collector works here: a context with one owner goes with its owner, and an object
    # whose only owner does not exist goes too.
    admin.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "canary", "ownerReferences": [ghost]}},
    )
    admin.delete_namespaced_config_map("alone-fn", namespace)
    admin.delete_namespaced_config_map("first-fn", namespace)
    wait_until(lambda: not exists(admin, namespace, "canary"), "the ghost-owned canary collected")
    wait_until(
        lambda: not exists(admin, namespace, owned_name),
        "the singly owned context collected with its owner",
    )

    # The shared context lost its owner when it was shared: neither the hostile owner nor the
    # first owner's deletion takes it away.
    assert exists(admin, namespace, shared)
    assert not admin.read_namespaced_config_map(shared, namespace).metadata.owner_references
