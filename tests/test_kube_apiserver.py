"""Smoke test of the real kube-apiserver used by the suite (see tests/support/kube.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.support.kube import KubeAPIServer, kube_apiserver, load_crds

pytestmark = pytest.mark.kube

kube = pytest.fixture(scope="module")(kube_apiserver)


@pytest.fixture(scope="module")
def admin(kube: KubeAPIServer) -> Iterator[kubernetes.client.ApiClient]:
    with kube.api_client() as client:
        yield client


@pytest.fixture
def namespace(admin: kubernetes.client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubernetes.client.CoreV1Api(admin).create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
    )
    return name


def test_immutable_configmap_rejects_updates(
    admin: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    payload = bytes(range(256))
    core.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name="ctx"),
            immutable=True,
            data={"kind": "context"},
            binary_data={"context.tar": base64.b64encode(payload).decode()},
        ),
    )

    stored = core.read_namespaced_config_map("ctx", namespace)
    assert stored.immutable is True
    assert base64.b64decode(stored.binary_data["context.tar"]) == payload

    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("ctx", namespace, {"data": {"kind": "changed"}})
    assert err.value.status == 422
    assert "field is immutable" in err.value.body


def test_configmap_over_1mib_is_rejected(
    admin: kubernetes.client.ApiClient, namespace: str
) -> None:
    with pytest.raises(ApiException) as err:
        kubernetes.client.CoreV1Api(admin).create_namespaced_config_map(
            namespace,
            kubernetes.client.V1ConfigMap(
                metadata=kubernetes.client.V1ObjectMeta(name="big"),
                binary_data={"blob": base64.b64encode(b"\0" * (1024 * 1024 + 1)).decode()},
            ),
        )
    assert err.value.status == 422
    assert "1048576" in err.value.body


def test_service_account_without_rbac_is_forbidden(kube: KubeAPIServer, namespace: str) -> None:
    token = kube.service_account_token(namespace, "builder")
    with kube.client_for_token(token) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:builder"
        with pytest.raises(ApiException) as err:
            kubernetes.client.CoreV1Api(client).list_namespaced_config_map(namespace)
    assert err.value.status == 403


def _dry_run_ksvc(
    admin: kubernetes.client.ApiClient, namespace: str, container: dict[str, str]
) -> dict[str, Any]:
    body = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "fn", "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }
    api = kubernetes.client.CustomObjectsApi(admin)
    deadline = time.monotonic() + 10
    while True:
        try:
            created: dict[str, Any] = api.create_namespaced_custom_object(
                "serving.knative.dev",
                "v1",
                namespace,
                "services",
                body,
                dry_run="All",
                field_validation="Strict",
            )
            return created
        except ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_crds_load_and_strict_dry_run(admin: kubernetes.client.ApiClient, namespace: str) -> None:
    names = load_crds(admin)
    assert {"services.serving.knative.dev", "pingsources.sources.knative.dev"} <= set(names)

    created = _dry_run_ksvc(admin, namespace, {"image": "registry.example/fn:1"})
    assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/fn:1"

    with pytest.raises(ApiException) as err:
        _dry_run_ksvc(admin, namespace, {"imagee": "registry.example/fn:1"})
    assert err.value.status == 400
    message = json.loads(err.value.body)["message"]
    assert (
        'strict decoding error: unknown field "spec.template.spec.containers[0].imagee"' in message
    )
