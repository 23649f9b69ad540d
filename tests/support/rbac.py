"""The deployment's own RBAC (knative/base/rbac.yaml), applied for real to a test API server.

Tests that run a store "as the function would" take a token from `apply_rbac`, so they run
with exactly the permissions the manifests grant, no more.
"""

from __future__ import annotations

import kubernetes.client
import kubernetes.dynamic
from kubernetes.client.rest import ApiException

from tests.support.kube import KubeAPIServer
from tests.support.manifests import RBAC_MANIFEST, handler_accounts, load_documents


def ensure_namespace(client: kubernetes.client.ApiClient, namespace: str) -> None:
    try:
        kubernetes.client.CoreV1Api(client).create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=namespace))
        )
    except ApiException as err:
        if err.status != 409:
            raise


def apply_rbac(kube: KubeAPIServer, namespace: str) -> dict[str, str]:
    """Apply rbac.yaml in namespace; return a bound ServiceAccount token per handler.

    Keys are the BUILD_CONTEXT_HANDLERS values of the two Services: "create" (request
    handler) and "cleanup". Applying twice is harmless (server-side apply).
    """
    with kube.api_client() as client:
        ensure_namespace(client, namespace)
        dynamic = kubernetes.dynamic.DynamicClient(client)
        for doc in load_documents(RBAC_MANIFEST):
            resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.server_side_apply(
                body=doc,
                namespace=namespace,
                field_manager="build-context-tests",
                force_conflicts=True,
            )
    return {
        handlers: kube.service_account_token(namespace, account)
        for handlers, account in handler_accounts().items()
    }
