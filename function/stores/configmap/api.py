"""The apiserver calls of the ConfigMap store, through the official client's ApiClient with raw
JSON and, where only metadata matters, `PartialObjectMetadata` replies, so neither listing nor
refreshing moves archive bytes. Every call goes through the shared StorageCalls wrapper."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kubernetes.client
import kubernetes.config

from ...errors import ConfigurationError
from ...retry import RetryPolicy
from ..calls import StorageCalls
from ..failures import NotFound
from . import errors
from .codec import SELECTOR

_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_MIN_ATTEMPT_SECONDS = 5.0
_CONNECT_SECONDS = 5.0
PROBE = RetryPolicy(attempts=1, deadline=5.0)
"""The start-up probe: one attempt, soon given up."""
PAGE_LIMIT = 50
"""Most items per list page: each is ~1.8 KB of metadata (half of it managedFields), and a page
is held in memory whole."""


def load_configuration() -> kubernetes.client.Configuration:
    """KUBECONFIG when set, else the pod's ServiceAccount when in a pod, else ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig or None, client_configuration=configuration
            )
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        raise ConfigurationError(
            "KUBECONFIG",
            f"no usable Kubernetes credentials ({exc})",
            "Run in a pod with a ServiceAccount token, or point KUBECONFIG at a kubeconfig file.",
        ) from None
    return configuration


class ConfigMapApi:
    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        calls: StorageCalls,
        threads: int,
        page_size: int,
    ) -> None:
        configuration = copy.copy(configuration)
        configuration.retries = False  # our RetryPolicy retries, with backoff and a deadline
        configuration.connection_pool_maxsize = threads
        self.client = kubernetes.client.ApiClient(configuration)
        self.calls = calls
        self.page_size = page_size

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """The created object's metadata."""
        created = self.request("create", namespace, "POST", _path(namespace), body=body)
        metadata: dict[str, Any] = created["metadata"]
        return metadata

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        """The whole object, archive included."""
        return self.request("get", namespace, "GET", _path(namespace, name), full=True, name=name)

    def read_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.request("get", namespace, "GET", _path(namespace, name), name=name)
        except NotFound:
            return None
        metadata: dict[str, Any] = found["metadata"]
        return metadata

    def patch_metadata(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the metadata; the patched object's metadata."""
        patched = self.request(
            "patch",
            namespace,
            "PATCH",
            _path(namespace, name),
            body={"metadata": patch},
            content_type="application/merge-patch+json",
            name=name,
        )
        metadata: dict[str, Any] = patched["metadata"]
        return metadata

    def delete(self, namespace: str, name: str, preconditions: dict[str, str]) -> None:
        self.request(
            "delete",
            namespace,
            "DELETE",
            _path(namespace, name),
            body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions},
            name=name,
        )

    def pages(
        self, namespace: str, probe: bool = False, selector: str = SELECTOR
    ) -> Iterator[dict[str, Any]]:
        """Our ConfigMaps' metadata (or those `selector` picks among them), a page at a time;
        `probe` tries each page once, soon."""
        token = ""
        while True:
            query: list[tuple[str, Any]] = [
                ("labelSelector", selector),
                ("limit", min(self.page_size, PAGE_LIMIT)),
            ]
            if token:
                query.append(("continue", token))
            page = self.request(
                "list",
                namespace,
                "GET",
                _path(namespace),
                query=query,
                policy=PROBE if probe else None,
                list_=True,
            )
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def close(self) -> None:
        self.client.close()
        self.client.rest_client.pool_manager.clear()

    def request(
        self,
        verb: str,
        namespace: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str = "application/json",
        full: bool = False,
        list_: bool = False,
        name: str = "",
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """One API call, retried on 429, 5xx and connection errors within the deadline; any
        other failure is typed (errors.py)."""
        accept = "application/json" if full else _METADATA_LIST if list_ else _METADATA_ONLY
        headers = {"Accept": accept, "Content-Type": content_type}
        policy = policy or self.calls.retry
        started = time.monotonic()

        def attempt() -> dict[str, Any]:
            left = policy.deadline - (time.monotonic() - started)
            read = max(0.1, min(left, max(_MIN_ATTEMPT_SECONDS, policy.deadline / policy.attempts)))
            response = self.client.call_api(
                path,
                method,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=(min(_CONNECT_SECONDS, read), read),
            )
            try:
                data = response.data
            finally:
                response.release_conn()
            decoded: dict[str, Any] = json.loads(data, object_hook=_lean) if data else {}
            return decoded

        where = errors.Call(verb, namespace, name, self.host, policy)
        return self.calls.run(
            verb,
            attempt,
            lambda error, attempts: errors.translate(error, attempts, where),
            span=f"kube {verb} configmaps",
            attributes={
                "build_context.store": self.calls.backend,
                "k8s.namespace.name": namespace,
                "http.request.method": method,
            },
            fields={"namespace": namespace},
            policy=policy,
        )


def _lean(found: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields while decoding: nothing here reads them, and they are half a page."""
    found.pop("managedFields", None)
    return found


def _path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    return f"{base}/{name}" if name else base
