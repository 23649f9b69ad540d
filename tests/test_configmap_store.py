"""The ConfigMap store against a real kube-apiserver (etcd, RBAC on), in process and over HTTP.

What we claim about Kubernetes (size limits, immutability, name and label rules, RBAC) is
checked by the apiserver itself. Two doubles stand in where a real apiserver cannot misbehave on
demand: a closed loopback port, and `ApiServerDouble`, which answers every request with one
fixed status.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.rest import ApiException
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from function import archive
from function.archive import Archive
from function.contract import OwnerReference
from function.errors import (
    CapacityExceeded,
    ConfigurationError,
    ContextTooLarge,
    InternalError,
    StorageConflict,
    StorageForbidden,
    StorageUnavailable,
)
from function.settings import load_settings
from function.stores.base import RETAIN, ContextRecord, Deletion
from function.stores.configmap import (
    APISERVER_LIMIT,
    KEY,
    REQUIRED_VERBS,
    ConfigMapStore,
    configmap_body,
    configmap_name,
)
from function.stores.failures import Rejected
from function.telemetry import Telemetry
from tests.conftest import StartServer
from tests.support.clocks import SimulatedMonotonic, SleepRecorder
from tests.support.contexts import assert_is_the_announced_archive, example
from tests.support.kube import KubeAPIServer
from tests.support.rbac import apply_rbac
from tests.support.records import FAST_RETRIES, FAST_RETRIES_ENV, incompressible
from tests.support.records import record as context_record
from tests.support.registry import Registry
from tests.support.seaweed import SeaweedS3
from tests.support.server import free_port
from tests.support.telemetry import data_points, total

pytestmark = pytest.mark.kube

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
record = functools.partial(context_record, created=T0, ttl=WEEK, function="disk-cleanup")
LAMBDA_OWNER = {"apiVersion": "lambda.knative.io/v1alpha1", "kind": "LambdaFunction"}


@pytest.fixture(scope="module")
def admin(kube: KubeAPIServer) -> Iterator[kubernetes.client.CoreV1Api]:
    with kube.api_client() as client:
        yield kubernetes.client.CoreV1Api(client)


def new_namespace(admin: kubernetes.client.CoreV1Api) -> str:
    name = f"cm-{uuid.uuid4().hex[:10]}"
    admin.create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def namespace(admin: kubernetes.client.CoreV1Api) -> str:
    return new_namespace(admin)


def open_configmaps(
    kube: KubeAPIServer,
    namespace: str,
    token: str | None = None,
    telemetry: Telemetry | None = None,
    meter_provider: MeterProvider | None = None,
    sleep: SleepRecorder | None = None,
    monotonic: SimulatedMonotonic | None = None,
    **settings: Any,
) -> ConfigMapStore:
    with kube.client_for_token(token or kube.token) as client:
        configuration = client.configuration
    return ConfigMapStore.from_settings(
        load_settings(storage="configmap", namespace=namespace, **{**FAST_RETRIES, **settings}),
        telemetry or Telemetry(meter_provider=MeterProvider(), tracer_provider=TracerProvider()),
        configuration=configuration,
        meter_provider=meter_provider or MeterProvider(),
        sleep=sleep or SleepRecorder(),
        monotonic=monotonic or SimulatedMonotonic(),
    )


def built(text: str = "print('hello')\n") -> Archive:
    return archive.build({"remediation.py": text, "Dockerfile": "FROM python:3.13-slim\n"})


def read(admin: kubernetes.client.CoreV1Api, namespace: str, name: str) -> Any:
    return admin.read_namespaced_config_map(name, namespace)


def names(admin: kubernetes.client.CoreV1Api, namespace: str) -> list[str]:
    return [cm.metadata.name for cm in admin.list_namespaced_config_map(namespace).items]


def gauge(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    return {str(p.attributes["namespace"]): int(p.value) for p in data_points(reader, name)}


# --- create, reuse, refresh -------------------------------------------------------------------


def test_a_context_is_one_immutable_configmap_with_its_record_in_labels_and_annotations(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context = built()
    wanted = record(context, namespace=namespace, metadata={"incident": "INC-42", "team": "sre"})

    stored = store.put_if_absent(context, wanted)

    name = f"disk-cleanup-build-context-{context.content_hash}"
    assert stored.reused is False
    assert stored.record == wanted
    assert stored.storage == {
        "backend": "configmap",
        "namespace": namespace,
        "configMap": name,
        "key": "context.tar.gz",
    }
    assert stored.context_uri == "tar:///workspace/context.tar.gz"
    configmap = read(admin, namespace, name)
    assert configmap.immutable is True
    assert configmap.data is None
    assert base64.b64decode(configmap.binary_data[KEY]) == context.data
    assert configmap.metadata.labels == {
        "app.kubernetes.io/managed-by": "build-context",
        "build-context.dev/function": "disk-cleanup",
        "build-context.dev/runtime": "python",
        "build-context.dev/image-tag": context.image_tag,
    }
    assert configmap.metadata.annotations == {
        "build-context.dev/content-hash": context.content_hash,
        "build-context.dev/archive-sha256": context.archive_sha256,
        "build-context.dev/size-bytes": str(context.size_bytes),
        "build-context.dev/runtime-version": "3.13",
        "build-context.dev/created-at": "2026-03-01T12:00:00Z",
        "build-context.dev/expires-at": "2026-03-08T12:00:00Z",
        "build-context.dev/request-id": "req-1",
        "build-context.dev/metadata": '{"incident":"INC-42","team":"sre"}',
    }
    assert configmap.metadata.owner_references is None
    assert store.get(namespace, "disk-cleanup", context.content_hash) == context.data
    with pytest.raises(KeyError):
        store.get(namespace, "disk-cleanup", "0" * 64)


def test_same_content_is_reused_and_only_a_later_expiry_is_patched(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context = built()
    first = store.put_if_absent(context, record(context, namespace=namespace))
    name = first.storage["configMap"]
    version = read(admin, namespace, name).metadata.resource_version

    later = store.put_if_absent(
        context,
        record(context, namespace=namespace, created=T0 + timedelta(days=2), request_id="req-2"),
    )
    patched = read(admin, namespace, name)
    earlier = store.put_if_absent(
        context, record(context, namespace=namespace, ttl=timedelta(days=1), request_id="req-3")
    )

    assert later.reused is True
    assert later.record.expires_at == T0 + timedelta(days=9)
    assert later.record.created_at == T0
    assert later.record.request_id == "req-1"
    assert patched.metadata.annotations["build-context.dev/expires-at"] == "2026-03-10T12:00:00Z"
    assert patched.metadata.resource_version != version
    assert base64.b64decode(patched.binary_data[KEY]) == context.data
    assert earlier.reused is True
    assert earlier.record.expires_at == T0 + timedelta(days=9)
    assert read(admin, namespace, name).metadata.resource_version == (
        patched.metadata.resource_version
    ), "an earlier expiry must not be written"
    assert names(admin, namespace) == [name]


def test_the_archive_bytes_can_never_be_changed(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context = built()
    name = store.put_if_absent(context, record(context, namespace=namespace)).storage["configMap"]

    with pytest.raises(ApiException) as refused:
        admin.patch_namespaced_config_map(
            name, namespace, {"binaryData": {KEY: base64.b64encode(b"evil").decode()}}
        )

    assert refused.value.status == 422
    assert "field is immutable" in refused.value.body
    assert store.get(namespace, "disk-cleanup", context.content_hash) == context.data


def test_a_name_clash_with_other_content_is_an_error_never_an_overwrite(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context, other = built("a = 1\n"), built("a = 2\n")
    squatter = configmap_body(other, record(other, namespace=namespace), None)
    squatter["metadata"]["name"] = configmap_name("disk-cleanup", context.content_hash)
    admin.create_namespaced_config_map(namespace, squatter)
    foreign = {"metadata": {"name": configmap_name("other-fn", context.content_hash)}}
    admin.create_namespaced_config_map(namespace, {**foreign, "data": {"a": "b"}})

    with pytest.raises(StorageConflict, match="never overwritten"):
        store.put_if_absent(context, record(context, namespace=namespace))
    with pytest.raises(StorageConflict, match="not a build context of ours"):
        store.put_if_absent(context, record(context, namespace=namespace, function="other-fn"))

    kept = read(admin, namespace, squatter["metadata"]["name"])
    assert base64.b64decode(kept.binary_data[KEY]) == other.data
    assert read(admin, namespace, "other-fn-build-context-" + context.content_hash).data == {
        "a": "b"
    }


# --- Kubernetes limits ------------------------------------------------------------------------


def test_our_size_limit_stops_an_archive_before_the_apiserver_would(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace, configmap_max_bytes=1_040_000)
    largest, too_large = incompressible(1_040_000), incompressible(APISERVER_LIMIT + 1)

    stored = store.put_if_absent(largest, record(largest, namespace=namespace))
    with pytest.raises(ContextTooLarge) as refused:
        store.put_if_absent(too_large, record(too_large, namespace=namespace))
    body = configmap_body(too_large, record(too_large, namespace=namespace), None)
    with pytest.raises(ApiException) as rejected:
        admin.create_namespaced_config_map(namespace, body)

    assert store.get(namespace, "disk-cleanup", largest.content_hash) == largest.data
    assert names(admin, namespace) == [stored.storage["configMap"]]
    message = refused.value.message
    assert "1048577 bytes" in message and "at most 1040000" in message
    assert "BUILD_CONTEXT_CONFIGMAP_MAX_BYTES" in message
    assert "BUILD_CONTEXT_OVERFLOW_STORAGE=s3" in message
    assert rejected.value.status == 422
    assert "may not be more than 1048576 bytes" in rejected.value.body


def test_the_default_limit_keeps_a_margin_under_one_mebibyte(
    kube: KubeAPIServer, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context = incompressible(1_000_001)

    with pytest.raises(ContextTooLarge, match="at most 1000000"):
        store.put_if_absent(context, record(context, namespace=namespace))


def test_the_longest_function_name_gives_valid_names_and_labels(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    function = "f" + "-x" * 30 + "yz"
    assert len(function) == 63
    context = built()

    stored = store.put_if_absent(context, record(context, namespace=namespace, function=function))

    configmap = read(admin, namespace, stored.storage["configMap"])
    assert len(configmap.metadata.name) <= 253
    assert configmap.metadata.labels["build-context.dev/function"] == function
    assert all(len(value) <= 63 for value in configmap.metadata.labels.values())
    assert configmap.metadata.annotations["build-context.dev/content-hash"] == (
        context.content_hash
    )


# --- namespaces and owners --------------------------------------------------------------------


def test_a_context_is_written_in_its_record_s_namespace_and_listed_from_the_allowed_ones(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    """Which namespaces a request may name is checked once, by the service (see
    test_http_namespace_allow_list); the store writes where the record says."""
    other, elsewhere = new_namespace(admin), new_namespace(admin)
    store = open_configmaps(kube, namespace, allowed_namespaces=other)
    context = built()

    stored = store.put_if_absent(context, record(context, namespace=other))
    store.put_if_absent(context, record(context, namespace=elsewhere))

    assert stored.storage["namespace"] == other
    assert names(admin, other) == [stored.storage["configMap"]]
    assert [item.record.namespace for item in store.list()] == [other]


def test_a_missing_namespace_is_a_forbidden_store_with_the_fix(
    kube: KubeAPIServer, namespace: str
) -> None:
    store = open_configmaps(kube, namespace, allowed_namespaces="never-created")
    context = built()

    with pytest.raises(StorageForbidden, match="create the namespace"):
        store.put_if_absent(context, record(context, namespace="never-created"))


def test_the_owning_function_becomes_the_owner_reference(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    owner = OwnerReference(**LAMBDA_OWNER, name="disk-cleanup", uid=str(uuid.uuid4()))
    owned = built("a = 1\n")

    first = store.put_if_absent(owned, record(owned, namespace=namespace), owner)
    again = store.put_if_absent(owned, record(owned, namespace=namespace), owner)

    assert again.reused
    references = read(admin, namespace, first.storage["configMap"]).metadata.owner_references
    assert [(r.api_version, r.kind, r.name, r.uid) for r in references] == [
        ("lambda.knative.io/v1alpha1", "LambdaFunction", "disk-cleanup", owner.uid)
    ]


@pytest.mark.parametrize("second_owner", ["another", "none"])
def test_a_shared_context_loses_its_owner_and_a_reuse_never_adds_one(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str, second_owner: str
) -> None:
    """One request's owner (mistaken or hostile: a uid that exists nowhere) must never get a
    context that another request uses garbage-collected: once shared, it has no owner."""
    store = open_configmaps(kube, namespace)
    first_owner = OwnerReference(**LAMBDA_OWNER, name="disk-cleanup", uid=str(uuid.uuid4()))
    hostile = OwnerReference(**LAMBDA_OWNER, name="gone", uid=str(uuid.uuid4()))
    shared, unowned = built("a = 1\n"), built("a = 2\n")

    stored = store.put_if_absent(shared, record(shared, namespace=namespace), first_owner)
    store.put_if_absent(
        shared, record(shared, namespace=namespace), hostile if second_owner == "another" else None
    )
    store.put_if_absent(shared, record(shared, namespace=namespace), first_owner)
    plain = store.put_if_absent(unowned, record(unowned, namespace=namespace))
    store.put_if_absent(unowned, record(unowned, namespace=namespace), hostile)

    for kept in (stored, plain):
        configmap = read(admin, namespace, kept.storage["configMap"])
        assert not configmap.metadata.owner_references


def test_an_owner_the_apiserver_rejects_is_an_internal_error_with_its_message(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    owner = OwnerReference(api_version="a/b/c", kind="LambdaFunction", name="x", uid="u-1")
    context = built()

    with pytest.raises(InternalError) as failed:
        store.put_if_absent(context, record(context, namespace=namespace), owner)

    assert type(failed.value) is Rejected, "not a StorageConflict: the apiserver said why"
    assert failed.value.reason == "InternalError"
    assert "(422)" in failed.value.message and "ownerReferences" in failed.value.message
    assert names(admin, namespace) == []


# --- the capacity guard -----------------------------------------------------------------------


def test_the_namespace_cap_routes_new_contexts_away_but_still_reuses_stored_ones(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    reader = InMemoryMetricReader()
    size = 20_000
    store = open_configmaps(
        kube,
        namespace,
        meter_provider=MeterProvider(metric_readers=[reader]),
        configmap_namespace_max_bytes=2 * size + size // 2,
    )
    first, second, third = (incompressible(size) for _ in range(3))
    store.put_if_absent(first, record(first, namespace=namespace))
    store.put_if_absent(second, record(second, namespace=namespace))

    with pytest.raises(CapacityExceeded) as full:
        store.put_if_absent(third, record(third, namespace=namespace))
    reused = store.put_if_absent(first, record(first, namespace=namespace, request_id="req-2"))

    assert full.value.retryable is True
    assert f"holds 2 build-context ConfigMaps with {2 * size} bytes" in full.value.message
    assert "cap of 50000 bytes (BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_BYTES)" in full.value.message
    assert reused.reused is True
    assert len(names(admin, namespace)) == 2
    assert gauge(reader, "build_context.configmap.usage") == {namespace: 2 * size}
    assert gauge(reader, "build_context.configmap.objects") == {namespace: 2}

    (listed,) = [item for item in store.list() if item.record.content_hash == second.content_hash]
    assert store.delete(listed, lambda current: True) is Deletion.DELETED
    store.put_if_absent(third, record(third, namespace=namespace))
    assert gauge(reader, "build_context.configmap.usage") == {namespace: 2 * size}


def test_the_count_cap_applies_too(kube: KubeAPIServer, namespace: str) -> None:
    store = open_configmaps(kube, namespace, configmap_namespace_max_count=1)
    first, second = built("a = 1\n"), built("a = 2\n")
    store.put_if_absent(first, record(first, namespace=namespace))

    with pytest.raises(CapacityExceeded, match="BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_COUNT"):
        store.put_if_absent(second, record(second, namespace=namespace))


def test_usage_comes_from_a_periodic_metadata_list_not_one_per_request(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    clock = SimulatedMonotonic()
    store = open_configmaps(
        kube,
        namespace,
        telemetry=Telemetry(meter_provider=MeterProvider(), tracer_provider=tracer_provider),
        monotonic=clock,
        configmap_namespace_max_bytes=100_000,
        configmap_usage_refresh_seconds=30,
    )
    ours = [built(f"n = {i}\n") for i in range(4)]
    store.put_if_absent(ours[0], record(ours[0], namespace=namespace))
    # Another replica's context, unseen until the refresh; with it, ours[3] is one byte too many.
    neighbour = incompressible(100_000 - sum(c.size_bytes for c in ours) + 1)
    admin.create_namespaced_config_map(
        namespace, configmap_body(neighbour, record(neighbour, namespace=namespace), None)
    )

    store.put_if_absent(ours[1], record(ours[1], namespace=namespace))
    clock.now += 29
    store.put_if_absent(ours[2], record(ours[2], namespace=namespace))
    clock.now += 2
    with pytest.raises(CapacityExceeded):
        store.put_if_absent(ours[3], record(ours[3], namespace=namespace))

    lists = [s for s in spans.get_finished_spans() if s.name == "kube list configmaps"]
    assert len(lists) == 2
    assert store.usage(namespace).bytes == neighbour.size_bytes + sum(
        c.size_bytes for c in ours[:3]
    )


# --- listing, deleting, pinning ---------------------------------------------------------------


def test_list_pages_through_our_configmaps_only_and_reads_pins(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace, cleanup_page_size=2)
    contexts = [built(f"n = {i}\n") for i in range(5)]
    records = [
        store.put_if_absent(c, record(c, namespace=namespace, function=f"fn-{i}")).record
        for i, c in enumerate(contexts)
    ]
    admin.create_namespaced_config_map(namespace, {"metadata": {"name": "app-settings"}})
    pinned = configmap_name("fn-3", contexts[3].content_hash)
    admin.patch_namespaced_config_map(pinned, namespace, {"metadata": {"labels": {RETAIN: "true"}}})

    listed = {item.record.function: item.record for item in store.list()}

    assert listed == {r.function: replace(r, retain=r.function == "fn-3") for r in records}
    assert list(store.list(frozenset({"some-other-namespace"}))) == []


def test_delete_rechecks_the_fresh_record_and_loses_to_a_refresh(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    context = built()
    store.put_if_absent(context, record(context, namespace=namespace))
    (item,) = store.list()

    def refreshed_meanwhile(current: ContextRecord) -> bool:
        """Runs between the re-read and the delete: a request reuses the context right then."""
        store.put_if_absent(context, record(context, namespace=namespace, created=T0 + WEEK))
        return True

    kept = store.delete(item, refreshed_meanwhile)
    seen: list[ContextRecord] = []

    def remember(current: ContextRecord) -> bool:
        seen.append(current)
        return False

    still_kept = store.delete(item, remember)
    deleted = store.delete(item, lambda current: True)
    again = store.delete(item, lambda current: True)

    assert (kept, still_kept, deleted, again) == (
        Deletion.KEPT,
        Deletion.KEPT,
        Deletion.DELETED,
        Deletion.GONE,
    )
    assert seen[0].expires_at == T0 + 2 * WEEK
    assert names(admin, namespace) == []


def test_a_foreign_configmap_wearing_our_label_is_skipped(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    store = open_configmaps(kube, namespace)
    label = {"app.kubernetes.io/managed-by": "build-context"}
    admin.create_namespaced_config_map(namespace, {"metadata": {"name": "x", "labels": label}})

    assert list(store.list()) == []


# --- RBAC: the Role in knative/ ---------------------------------------------------------------


def test_the_roles_grant_what_the_store_calls_and_nothing_more(
    kube: KubeAPIServer, admin: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    other = new_namespace(admin)
    tokens = apply_rbac(kube, namespace)
    apply_rbac(kube, other)  # the same Role exists there, bound to that namespace's account
    create = open_configmaps(kube, namespace, token=tokens["create"], allowed_namespaces=other)
    cleanup = open_configmaps(kube, namespace, token=tokens["cleanup"])
    context = built()
    owner = OwnerReference(**LAMBDA_OWNER, name="disk-cleanup", uid=str(uuid.uuid4()))

    create.check()
    cleanup.check()
    create.put_if_absent(context, record(context, namespace=namespace))
    reused = create.put_if_absent(
        context, record(context, namespace=namespace, ttl=2 * WEEK, request_id="req-2"), owner
    )
    with pytest.raises(StorageForbidden, match=f"namespace '{other}'"):
        create.put_if_absent(context, record(context, namespace=other))
    (item,) = cleanup.list()
    deleted = cleanup.delete(item, lambda current: current.expires_at == T0 + 2 * WEEK)

    assert reused.reused is True
    assert deleted is Deletion.DELETED
    for handlers, token in tokens.items():
        with kube.client_for_token(token) as client:
            rules = kubernetes.client.AuthorizationV1Api(client).create_self_subject_rules_review(
                {"spec": {"namespace": namespace}}
            )
            core = kubernetes.client.CoreV1Api(client)
            with pytest.raises(ApiException) as secrets:
                core.list_namespaced_secret(namespace)
            with pytest.raises(ApiException) as elsewhere:
                core.list_namespaced_config_map(other)
        granted = {
            verb
            for rule in rules.status.resource_rules
            if "configmaps" in (rule.resources or [])
            for verb in rule.verbs
        }
        assert granted == set(REQUIRED_VERBS[handlers]), handlers
        assert (secrets.value.status, elsewhere.value.status) == (403, 403)


def test_start_up_fails_without_the_right_to_list_configmaps(
    kube: KubeAPIServer, namespace: str
) -> None:
    token = kube.service_account_token(namespace, "unbound")
    store = open_configmaps(kube, namespace, token=token)

    with pytest.raises(ConfigurationError) as failed:
        store.check()

    assert failed.value.variable == "BUILD_CONTEXT_NAMESPACE"
    assert "refused to list configmaps" in failed.value.problem
    assert "Role in knative/base/rbac.yaml" in failed.value.problem


# --- retries ----------------------------------------------------------------------------------


class ApiServerDouble:
    """Test double of an overloaded apiserver: every request gets one fixed status."""

    def __init__(self, status: int) -> None:
        self.requests = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                double.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = json.dumps(
                    {"kind": "Status", "code": status, "message": f"test double says {status}"}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def store_at(url: str, reader: InMemoryMetricReader, sleep: SleepRecorder, **settings: Any) -> Any:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=TracerProvider()
    )
    return ConfigMapStore.from_settings(
        load_settings(storage="configmap", namespace="team-a", **{**FAST_RETRIES, **settings}),
        telemetry,
        configuration=configuration,
        meter_provider=MeterProvider(),
        sleep=sleep,
    )


def retries_counted(reader: InMemoryMetricReader) -> int:
    return total(reader, "build_context.storage.retries", store="configmap")


@pytest.mark.parametrize("status", [503, 429, 500])
def test_an_overloaded_apiserver_is_retried_then_a_retryable_failure(status: int) -> None:
    double = ApiServerDouble(status)
    reader, sleep = InMemoryMetricReader(), SleepRecorder()
    store = store_at(double.url, reader, sleep, retry_attempts=4)
    context = built()
    try:
        with pytest.raises(StorageUnavailable) as failed:
            store.put_if_absent(context, record(context, namespace="team-a"))
    finally:
        store.close()
        double.close()

    assert double.requests == 4
    assert len(sleep.delays) == 3
    assert retries_counted(reader) == 3
    assert failed.value.retryable is True
    assert f"{status} test double says {status}" in failed.value.message
    assert "within 4 attempts" in failed.value.message


def test_a_refused_connection_is_retried_then_a_retryable_failure() -> None:
    reader, sleep = InMemoryMetricReader(), SleepRecorder()
    store = store_at(f"http://127.0.0.1:{free_port()}", reader, sleep, retry_attempts=3)
    context = built()

    with pytest.raises(StorageUnavailable) as failed:
        store.put_if_absent(context, record(context, namespace="team-a"))

    assert (len(sleep.delays), retries_counted(reader)) == (2, 2)
    assert failed.value.retryable is True
    assert "Connection refused" in failed.value.message or "NewConnectionError" in (
        failed.value.message
    )
    assert all(0 <= delay <= 0.04 for delay in sleep.delays)


def test_a_client_error_is_not_retried() -> None:
    double = ApiServerDouble(400)
    reader, sleep = InMemoryMetricReader(), SleepRecorder()
    store = store_at(double.url, reader, sleep)
    context = built()
    try:
        with pytest.raises(InternalError, match="test double says 400"):
            store.put_if_absent(context, record(context, namespace="team-a"))
    finally:
        double.close()

    assert (double.requests, sleep.delays) == (1, [])


def test_a_hung_apiserver_cannot_hold_a_request_past_the_deadline() -> None:
    """The listening socket accepts and never answers; each attempt's read timeout is what is
    left of the deadline."""
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    reader, sleep = InMemoryMetricReader(), SleepRecorder()
    store = store_at(
        f"http://127.0.0.1:{hung.getsockname()[1]}", reader, sleep, retry_deadline_seconds=1.0
    )
    context = built()
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable) as failed:
            store.put_if_absent(context, record(context, namespace="team-a"))
    finally:
        hung.close()

    assert time.monotonic() - started < 10
    assert "ReadTimeoutError" in failed.value.message or "timed out" in failed.value.message


# --- over HTTP --------------------------------------------------------------------------------


def configmap_env(kube: KubeAPIServer, namespace: str, **extra: str) -> dict[str, str]:
    return {
        "BUILD_CONTEXT_STORAGE": "configmap",
        **kube.function_env(namespace),
        **FAST_RETRIES_ENV,
        "BUILD_CONTEXT_RETRY_ATTEMPTS": "2",  # one retry: the unreachable-apiserver test counts it
        **extra,
    }


def test_http_created_event_names_the_configmap_that_holds_the_archive(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    namespace: str,
    start_server: StartServer,
    tmp_path: Path,
) -> None:
    token = apply_rbac(kube, namespace)["create"]
    kubeconfig = kube.write_kubeconfig(tmp_path / "sa-kubeconfig", token, "sa")
    server = start_server(**configmap_env(kube, namespace, KUBECONFIG=str(kubeconfig)))
    request = example("python")

    data, again = server.send_twice(request)
    name = f"{request['lambdaFunction']}-build-context-{data['contentHash']}"
    assert data["storage"] == {
        "backend": "configmap",
        "namespace": namespace,
        "configMap": name,
        "key": "context.tar.gz",
    }
    assert data["contextUri"] == "tar:///workspace/context.tar.gz"
    stored = base64.b64decode(read(admin, namespace, name).binary_data[KEY])
    assert_is_the_announced_archive(stored, data)
    assert (again["reused"], again["storage"]) == (True, data["storage"])
    metrics = server.session.get(f"{server.url}/metrics", timeout=10).text
    for series, value in (("usage_bytes", len(stored)), ("objects", 1)):
        pattern = rf'build_context_configmap_{series}{{namespace="{namespace}"[^}}]*}} {value}\.0'
        assert re.search(pattern, metrics), pattern


def test_http_namespace_allow_list(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    namespace: str,
    start_server: StartServer,
) -> None:
    other, elsewhere = new_namespace(admin), new_namespace(admin)
    server = start_server(**configmap_env(kube, namespace, BUILD_CONTEXT_ALLOWED_NAMESPACES=other))

    allowed = server.send({**example("python"), "namespace": other})
    refused = server.send({**example("python"), "namespace": elsewhere})

    assert allowed.type == "buildcontext.created", allowed
    assert allowed.data["storage"]["namespace"] == other
    assert refused.type == "buildcontext.failed", refused
    assert (refused.data["reason"], refused.data["retryable"]) == ("StorageForbidden", False)
    assert names(admin, elsewhere) == []


def test_http_too_large_without_an_overflow_store_fails_with_the_limit(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    namespace: str,
    start_server: StartServer,
) -> None:
    server = start_server(
        **configmap_env(kube, namespace, BUILD_CONTEXT_CONFIGMAP_MAX_BYTES="1024")
    )
    noise = "".join(f"# {os.urandom(24).hex()}\n" for _ in range(64))
    request = {**example("python"), "sourceCode": noise + example("python")["sourceCode"]}

    reply = server.send(request)

    assert reply.type == "buildcontext.failed", reply
    assert (reply.data["reason"], reply.data["retryable"]) == ("ContextTooLarge", False)
    assert "at most 1024" in reply.data["message"]
    assert names(admin, namespace) == []


def test_http_unreachable_apiserver_is_retryable(
    kube: KubeAPIServer, namespace: str, start_server: StartServer, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "closed-kubeconfig"
    config = yaml.safe_load(Path(str(kube.kubeconfig_path)).read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    kubeconfig.write_text(yaml.safe_dump(config))
    server = start_server(**configmap_env(kube, namespace, KUBECONFIG=str(kubeconfig)))

    reply = server.send(example("python"))

    assert reply.type == "buildcontext.failed", reply
    assert (reply.data["reason"], reply.data["retryable"]) == ("StorageUnavailable", True)
    retried = [line for line in server.log_lines() if line["message"] == "storage call retried"]
    assert [(line["store"], line["attempt"]) for line in retried] == [("configmap", 1)]


def test_http_start_up_names_missing_credentials(start_server: StartServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"

    with pytest.raises(RuntimeError, match="KUBECONFIG: no usable Kubernetes credentials"):
        start_server(BUILD_CONTEXT_STORAGE="configmap", KUBECONFIG=str(missing))


@pytest.mark.s3
def test_http_contexts_a_configmap_cannot_take_overflow_to_s3(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    namespace: str,
    seaweed: SeaweedS3,
    start_server: StartServer,
) -> None:
    """Too large for the size limit, or over the namespace cap: both go to the overflow store."""
    bucket = f"overflow-{uuid.uuid4().hex[:10]}"
    s3 = seaweed.client()
    s3.create_bucket(Bucket=bucket)
    server = start_server(
        **configmap_env(
            kube,
            namespace,
            BUILD_CONTEXT_CONFIGMAP_MAX_BYTES="1024",
            BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_COUNT="1",
            BUILD_CONTEXT_OVERFLOW_STORAGE="s3",
            **seaweed.function_env(bucket),
        )
    )
    request = example("python")
    noise = "".join(f"# {os.urandom(24).hex()}\n" for _ in range(64))

    fits = server.send(request)
    over_cap = server.send({**request, "sourceCode": "# another\n" + request["sourceCode"]})
    too_large = server.send({**request, "sourceCode": noise + request["sourceCode"]})

    assert (fits.data["storage"]["backend"], fits.data["overflow"]) == ("configmap", False)
    for reply in (over_cap, too_large):
        assert reply.type == "buildcontext.created", reply
        assert (reply.data["storage"]["backend"], reply.data["overflow"]) == ("s3", True)
        key = reply.data["storage"]["key"]
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == reply.data["archiveSha256"]
    assert names(admin, namespace) == [fits.data["storage"]["configMap"]]


@pytest.mark.oci
def test_http_contexts_a_configmap_cannot_take_overflow_to_the_registry(
    kube: KubeAPIServer,
    admin: kubernetes.client.CoreV1Api,
    namespace: str,
    registry: Registry,
    start_server: StartServer,
    tmp_path: Path,
) -> None:
    prefix = f"overflow-{uuid.uuid4().hex[:10]}"
    config = registry.docker_config(tmp_path / "docker" / "config.json")
    server = start_server(
        **configmap_env(
            kube,
            namespace,
            BUILD_CONTEXT_CONFIGMAP_MAX_BYTES="1024",
            BUILD_CONTEXT_OVERFLOW_STORAGE="oci",
            BUILD_CONTEXT_OCI_REGISTRY=registry.host,
            BUILD_CONTEXT_OCI_REPOSITORY=prefix,
            BUILD_CONTEXT_OCI_DOCKER_CONFIG=str(config),
            BUILD_CONTEXT_OCI_CA_FILE=str(registry.ca_path),
        )
    )
    request = example("python")
    noise = "".join(f"# {os.urandom(24).hex()}\n" for _ in range(64))

    fits = server.send(request)
    too_large = server.send({**request, "sourceCode": noise + request["sourceCode"]})

    assert (fits.data["storage"]["backend"], fits.data["overflow"]) == ("configmap", False)
    assert too_large.type == "buildcontext.created", too_large
    data = too_large.data
    assert (data["storage"]["backend"], data["overflow"]) == ("oci", True)
    assert data["contextUri"].startswith(f"oci://{registry.host}/{prefix}/{namespace}/")
    repository = data["storage"]["repository"]
    layer = registry.crane("blob", f"{registry.host}/{repository}@sha256:{data['archiveSha256']}")
    assert hashlib.sha256(layer.stdout).hexdigest() == data["archiveSha256"]
    assert names(admin, namespace) == [fits.data["storage"]["configMap"]]


# --- the documentation ------------------------------------------------------------------------


def test_the_documented_kaniko_job_mounts_a_stored_context_where_context_uri_points(
    kube: KubeAPIServer, namespace: str
) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configmap.md").read_text()
    section = docs.split("## Building with kaniko", 1)[1]
    manifest = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    store = open_configmaps(kube, namespace)
    context = built()
    stored = store.put_if_absent(context, record(context, namespace=namespace))
    filled = (
        manifest.replace("NAMESPACE", namespace)
        .replace("CONFIGMAP", stored.storage["configMap"])
        .replace("REGISTRY", "registry.example.com/remediation")
        .replace("IMAGE_TAG", context.image_tag)
    )
    job = yaml.safe_load(filled)

    with kube.api_client() as client:
        created = kubernetes.client.BatchV1Api(client).create_namespaced_job(
            namespace, job, dry_run="All"
        )

    pod = created.spec.template.spec
    (mount,) = pod.containers[0].volume_mounts
    (volume,) = [v for v in pod.volumes if v.name == mount.name]
    assert volume.config_map.name == stored.storage["configMap"]
    assert f"--context={stored.context_uri}" in pod.containers[0].args
    assert stored.context_uri == f"tar://{mount.mount_path}/{stored.storage['key']}"
