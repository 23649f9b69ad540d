"""The deployment: func.yaml and knative/ render, validate and grant exactly what the code needs.

Offline checks read the files as they are; the `kube` tests render them with the real
`kubectl kustomize` and send them to a real API server (dry run, strict field validation),
and apply the real RBAC to check what each ServiceAccount may do.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.dynamic
import kubernetes_validate
import pytest
import requests
import yaml
from kubernetes.client.rest import ApiException

from function import contract
from function.docs import render
from function.settings import Settings, env_name
from function.workers import process_count
from tests.support.kube import REPO_ROOT, KubeAPIServer, kube_apiserver, kube_bin_dir, load_crds
from tests.support.manifests import (
    BASE_DIR,
    FUNC_YAML,
    KNATIVE_DIR,
    SETTINGS_CONFIGMAP,
    Manifest,
    container,
    crd_schemas,
    find,
    handler_service,
    kustomize,
    load_documents,
    of_kind,
    raw_manifests,
    unknown_fields,
)
from tests.support.rbac import apply_rbac, ensure_namespace
from tests.support.server import FunctionServer

KUBERNETES_VERSIONS = ("1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0")
CORE_GROUPS = ("v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1")
KNATIVE_REVISION_FIELDS = (
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
)
SETTINGS_NAME = "build-context-settings"
# Beta "delivery-timeout" feature (on by default); the CRD schema does not list it.
UNDECLARED_BUT_SUPPORTED = frozenset({"spec.delivery.timeout"})
# What each handler may do to ConfigMaps in its namespace, and nothing else.
HANDLER_VERBS = {
    "create": ("create", "get", "list", "patch"),
    "cleanup": ("get", "list", "delete"),
}
ISO_SECONDS = re.compile(r"^PT(\d+(?:\.\d+)?)S$")


def _knative_services(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in of_kind(docs, "Service") if d["apiVersion"] == "serving.knative.dev/v1"]


def _seconds(duration: str) -> float:
    match = ISO_SECONDS.match(duration)
    assert match, f"{duration!r} is not an ISO-8601 duration in seconds"
    return float(match.group(1))


def _settings(data: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load the settings a pod gets from this ConfigMap data (envFrom), as the function does."""
    for variable in [env_name(name) for name in Settings.model_fields]:
        monkeypatch.delenv(variable, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _rendered_settings(rendered: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the pods of a rendered overlay get from its settings ConfigMap."""
    return _settings(find(rendered, "ConfigMap", SETTINGS_NAME)["data"], monkeypatch)


# --- generated files --------------------------------------------------------------------


def test_settings_configmap_is_generated_from_the_settings_model() -> None:
    assert SETTINGS_CONFIGMAP.read_text() == render("configmap"), (
        "knative/base/settings-configmap.yaml is stale: run "
        "`python -m function settings --format configmap > knative/base/settings-configmap.yaml`"
    )


def test_settings_env_is_generated_from_the_settings_model() -> None:
    assert (REPO_ROOT / "config" / "settings.env").read_text() == render("env"), (
        "config/settings.env is stale: run `python -m function settings > config/settings.env`"
    )


def test_settings_configmap_holds_every_variable_with_its_default_and_a_comment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = SETTINGS_CONFIGMAP.read_text()
    data = load_documents(SETTINGS_CONFIGMAP)[0]["data"]
    for name, field in Settings.model_fields.items():
        variable = env_name(name)
        if variable == "PORT":
            assert variable not in data, "Knative sets PORT; the ConfigMap must not"
            continue
        assert f"  # {field.description}\n  {variable}: " in text, variable
    assert _settings(data, monkeypatch) == _settings({}, monkeypatch)


# --- offline validation -----------------------------------------------------------------


def _core_objects() -> list[Manifest]:
    """Core objects of every manifest, plus each Knative Service's pod template as a Pod."""
    docs = raw_manifests()
    objects = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    for service in _knative_services(docs):
        template = copy.deepcopy(service["spec"]["template"])
        for knative_only in KNATIVE_REVISION_FIELDS:
            template["spec"].pop(knative_only, None)
        for main in template["spec"]["containers"]:
            # Knative fills in a probe's port with the container's port; a Pod must name it.
            port = main.get("ports", [{"containerPort": 8080}])[0]["containerPort"]
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in main:
                    main[probe]["httpGet"].setdefault("port", port)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": service["metadata"]["name"], **template.get("metadata", {})},
                "spec": template["spec"],
            }
        )
    return objects


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_validate_offline(version: str) -> None:
    objects = _core_objects()
    assert {o["kind"] for o in objects} >= {
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "Pod",
        "NetworkPolicy",
    }
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{obj['kind']} {obj['metadata']['name']} on Kubernetes {version}: {error.message}"
            ) from None


def test_offline_validation_catches_a_misspelt_container_field() -> None:
    pod = next(o for o in _core_objects() if o["kind"] == "Pod")
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_use_only_fields_their_crd_declares() -> None:
    schemas = crd_schemas()
    custom = [d for d in raw_manifests() if d["apiVersion"] not in CORE_GROUPS]
    assert {d["kind"] for d in custom} == {"Service", "Trigger", "PingSource"}
    for doc in custom:
        schema = schemas[(doc["apiVersion"], doc["kind"])]
        assert unknown_fields(schema, doc, allowed=UNDECLARED_BUT_SUPPORTED) == [], doc["kind"]


def test_crd_walk_catches_a_typo_the_api_server_would_keep() -> None:
    trigger = copy.deepcopy(find(raw_manifests(), "Trigger", "build-context-requests"))
    trigger["spec"]["delivery"]["backofPolicy"] = "linear"
    trigger["spec"]["brokr"] = "default"
    schema = crd_schemas()[("eventing.knative.dev/v1", "Trigger")]
    assert unknown_fields(schema, trigger, allowed=UNDECLARED_BUT_SUPPORTED) == [
        "spec.delivery.backofPolicy",
        "spec.brokr",
    ]


# --- what the manifests promise ---------------------------------------------------------


def test_function_services_are_locked_down() -> None:
    services = _knative_services(raw_manifests())
    assert len(services) >= 3
    for service in services:
        name = service["metadata"]["name"]
        spec = service["spec"]["template"]["spec"]
        main = container(service)
        assert main["securityContext"] == {
            **main["securityContext"],
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
        assert main["securityContext"]["runAsUser"] > 0, name
        resources = main["resources"]
        assert set(resources) == {"requests", "limits"}, name
        assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"]), name
        assert spec["serviceAccountName"].startswith("build-context"), name
    for handlers in ("create", "cleanup"):
        service = handler_service(raw_manifests(), handlers)
        main = container(service)
        assert main["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
        assert main["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
        assert main["envFrom"] == [{"configMapRef": {"name": SETTINGS_NAME}}]
        assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
        volumes = {v["name"]: v for v in service["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        assert main["image"] == "build-context", "both handlers run the one function image"


def test_timeouts_and_concurrency_fit_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = raw_manifests()
    settings_data = load_documents(SETTINGS_CONFIGMAP)[0]["data"]
    settings = _settings(settings_data, monkeypatch)
    requests_service = handler_service(docs, "create")["spec"]["template"]
    cleanup_service = handler_service(docs, "cleanup")["spec"]["template"]
    delivery = find(docs, "Trigger", "build-context-requests")["spec"]["delivery"]
    deadline = settings.retry_deadline_seconds
    assert deadline < requests_service["spec"]["timeoutSeconds"] < _seconds(delivery["timeout"])
    assert deadline < cleanup_service["spec"]["timeoutSeconds"]
    for template in (requests_service, cleanup_service):
        # Knative gives a pod timeoutSeconds to stop: the drain must fit in it.
        assert settings.shutdown_grace_seconds <= template["spec"]["timeoutSeconds"]
    # Cleanup runs one at a time, in one process (the requests' concurrency: per overlay).
    assert cleanup_service["spec"]["containerConcurrency"] == 1
    assert _pod_shape(cleanup_service, settings_data, monkeypatch)[1] == 1
    assert cleanup_service["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == "1"


def _pod_shape(
    template: Manifest, settings_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, int]:
    """Server threads per process and processes of a Service's pod: its settings ConfigMap plus
    its container's env, at its CPU limit."""
    main = template["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
    pod = _settings({**settings_data, **env}, monkeypatch)
    return pod.server_threads, process_count(pod, _cpus(main["resources"]["limits"]["cpu"]))


def _cpus(quantity: str) -> int:
    """A CPU limit ("1", "500m") as the whole CPUs the function counts (rounded up)."""
    millis = int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)
    return max(1, -(-millis // 1000))


def test_trigger_sends_requests_to_the_request_handler_with_retries() -> None:
    docs = raw_manifests()
    trigger = find(docs, "Trigger", "build-context-requests")["spec"]
    assert trigger["broker"] == "default"
    assert trigger["filter"] == {"attributes": {"type": contract.REQUESTED}}
    subscriber = trigger["subscriber"]["ref"]
    assert subscriber["name"] == handler_service(docs, "create")["metadata"]["name"]
    delivery = trigger["delivery"]
    assert delivery["retry"] >= 3
    assert delivery["backoffPolicy"] == "exponential"
    assert _seconds(delivery["backoffDelay"]) > 0
    sink = delivery["deadLetterSink"]["ref"]
    dead_letters = find(docs, "Service", sink["name"])
    assert dead_letters["apiVersion"] == sink["apiVersion"]
    assert dead_letters["metadata"]["name"] != subscriber["name"]


def test_pingsource_drives_the_cleanup_handler_every_15_minutes() -> None:
    docs = raw_manifests()
    ping = find(docs, "PingSource", "build-context-cleanup")
    assert ping["apiVersion"] == "sources.knative.dev/v1"
    assert ping["spec"]["schedule"] == "*/15 * * * *"
    assert (
        ping["spec"]["sink"]["ref"]["name"] == handler_service(docs, "cleanup")["metadata"]["name"]
    )
    assert ping["spec"]["contentType"] == "application/json"
    contract.CleanupRequest.model_validate(json.loads(ping["spec"]["data"]))


def test_each_handler_has_its_own_least_privilege_role() -> None:
    docs = raw_manifests()
    granted: dict[str, list[Manifest]] = {}
    for binding in of_kind(docs, "RoleBinding"):
        role = find(docs, "Role", binding["roleRef"]["name"])
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert "namespace" not in subject, "a subject defaults to the binding's namespace"
            granted.setdefault(subject["name"], []).extend(role["rules"])
    assert of_kind(docs, "ClusterRole") == of_kind(docs, "ClusterRoleBinding") == []
    accounts = {
        handlers: handler_service(docs, handlers)["spec"]["template"]["spec"]["serviceAccountName"]
        for handlers in ("create", "cleanup")
    }
    assert accounts["create"] != accounts["cleanup"]
    configmaps = {"apiGroups": [""], "resources": ["configmaps"]}
    for handlers, verbs in HANDLER_VERBS.items():
        assert granted.pop(accounts[handlers]) == [{**configmaps, "verbs": list(verbs)}]
    assert granted == {}, "no other account may be granted anything"
    for account in of_kind(docs, "ServiceAccount"):
        if account["metadata"]["name"] not in accounts.values():
            assert account["automountServiceAccountToken"] is False


def test_every_service_is_cluster_local_and_fenced_by_the_network_policy() -> None:
    docs = raw_manifests()
    services = _knative_services(docs)
    for service in services:
        labels = service["metadata"]["labels"]
        assert labels["networking.knative.dev/visibility"] == "cluster-local", labels
    func = yaml.safe_load(FUNC_YAML.read_text())
    assert {"key": "networking.knative.dev/visibility", "value": "cluster-local"} in func["deploy"][
        "labels"
    ]
    policy = find(docs, "NetworkPolicy", "build-context")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    [selector] = policy["podSelector"]["matchExpressions"]
    assert selector["key"] == "serving.knative.dev/service" and selector["operator"] == "In"
    fenced = {s["metadata"]["name"] for s in services if "replies" not in s["metadata"]["name"]}
    assert set(selector["values"]) == fenced, "every Service of the base is behind the policy"
    admitted = {}
    for rule in policy["ingress"]:
        ports = tuple(sorted(p["port"] for p in rule["ports"]))
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector", "podSelector"}, "never a whole namespace"
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            [(key, value)] = peer["podSelector"]["matchLabels"].items()
            admitted[(namespace, key, value)] = ports
    assert admitted == {
        ("knative-serving", "app", "activator"): (8012, 8013),
        ("kourier-system", "app", "3scale-kourier-gateway"): (8012, 8013),
        ("istio-system", "istio", "ingressgateway"): (8012, 8013),
        ("knative-eventing", "eventing.knative.dev/brokerRole", "filter"): (8012, 8013),
        ("knative-eventing", "sources.knative.dev/role", "adapter"): (8012, 8013),
        ("knative-serving", "app", "autoscaler"): (9090,),
    }


def test_senders_carry_the_audiences_and_identities_the_function_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Knative names the OIDC ServiceAccount of a Trigger or a source
    `<name>-oidc-<group>-<kind>` (lowercase); the function's default allow-lists are those."""
    docs = raw_manifests()
    settings = _settings(load_documents(SETTINGS_CONFIGMAP)[0]["data"], monkeypatch)
    trigger = find(docs, "Trigger", "build-context-requests")
    ping = find(docs, "PingSource", "build-context-cleanup")
    assert trigger["spec"]["subscriber"]["audience"] == settings.auth_create_audience
    assert ping["spec"]["sink"]["audience"] == settings.auth_cleanup_audience
    assert settings.auth_create_audience != settings.auth_cleanup_audience
    trigger_account = f"{trigger['metadata']['name']}-oidc-eventing.knative.dev-trigger"
    ping_account = f"{ping['metadata']['name']}-oidc-sources.knative.dev-pingsource"
    assert settings.auth_create_subjects == trigger_account
    assert settings.auth_cleanup_subjects == ping_account
    assert max(len(trigger_account), len(ping_account)) <= 63, "else Knative hashes the name"


def test_func_yaml_deploys_the_request_handler_as_the_manifests_do() -> None:
    func = yaml.safe_load(FUNC_YAML.read_text())
    service = handler_service(raw_manifests(), "create")
    template = service["spec"]["template"]
    main = container(service)
    assert func["name"] == service["metadata"]["name"]
    assert func["runtime"] == "python"
    assert func["build"]["builder"] == "pack"
    deploy = func["deploy"]
    assert deploy["serviceAccountName"] == template["spec"]["serviceAccountName"]
    assert deploy["healthEndpoints"] == {
        "liveness": main["livenessProbe"]["httpGet"]["path"],
        "readiness": main["readinessProbe"]["httpGet"]["path"],
    }
    assert deploy["options"]["resources"]["requests"] == main["resources"]["requests"]
    limits = deploy["options"]["resources"]["limits"]
    assert limits == {**main["resources"]["limits"], "concurrency": 8}
    assert limits["concurrency"] == template["spec"]["containerConcurrency"]
    annotations = template["metadata"]["annotations"]
    assert (
        str(deploy["options"]["scale"]["max"]) == annotations["autoscaling.knative.dev/max-scale"]
    )
    envs = func["run"]["envs"]
    assert {"value": "{{ configMap:" + SETTINGS_NAME + " }}"} in envs
    assert {"name": "BUILD_CONTEXT_HANDLERS", "value": "create"} in envs
    assert {"emptyDir": {"sizeLimit": "256Mi"}, "path": "/tmp"} in func["run"]["volumes"]
    assert (REPO_ROOT / "Procfile").read_text().strip() == "web: python -m function"


def test_probe_paths_are_served_by_the_function(server: FunctionServer) -> None:
    paths = set()
    for service in _knative_services(raw_manifests()):
        main = container(service)
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in main:
                paths.add(main[probe]["httpGet"]["path"])
    assert paths == {"/health/readiness", "/health/liveness"}
    for path in sorted(paths):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 200, path
    metrics = requests.get(server.url + "/metrics", timeout=10)
    assert metrics.status_code == 200, "docs/deploy.md: metrics on the same port at /metrics"


# --- rendered with kubectl kustomize ----------------------------------------------------


@pytest.fixture(scope="module")
def overlay_dir() -> Iterator[Path]:
    """A user's overlay as docs/deploy.md writes it, next to a link to knative/."""
    root = Path(tempfile.mkdtemp(prefix="build-context-overlay-"))
    (root / "knative").symlink_to(KNATIVE_DIR)
    overlay = root / "deploy"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../knative"],
                "components": ["../knative/components/replies"],
                "images": [
                    {
                        "name": "build-context",
                        "newName": "registry.example.com/team/build-context",
                        "newTag": "v1",
                    }
                ],
                "patches": [
                    {
                        "target": {"kind": "Trigger"},
                        "patch": "- op: replace\n  path: /spec/broker\n  value: remediation\n",
                    },
                    {
                        "target": {"kind": "PingSource", "name": "build-context-cleanup"},
                        "patch": "- op: replace\n  path: /spec/schedule\n  value: 0 * * * *\n",
                    },
                ],
            }
        )
    )
    yield overlay
    shutil.rmtree(root)


RENDERED = {
    "knative": KNATIVE_DIR,
    "base": BASE_DIR,
    "s3": KNATIVE_DIR / "overlays" / "s3",
    "oci": KNATIVE_DIR / "overlays" / "oci",
    "func": KNATIVE_DIR / "overlays" / "func",
}


def _render(name: str, overlay_dir: Path) -> list[Manifest]:
    return kustomize(overlay_dir if name == "user" else RENDERED[name])


@pytest.mark.kube
def test_base_renders_to_the_files_with_the_configmap_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = kustomize(KNATIVE_DIR)
    assert kustomize(BASE_DIR) == rendered
    raw = raw_manifests()
    base_raw = [
        d
        for path in sorted(BASE_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for d in load_documents(path)
    ]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in base_raw
    )
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "build-context"
        if doc["kind"] in ("Role", "RoleBinding"):
            source = find(raw, doc["kind"], doc["metadata"]["name"])
            assert {k: v for k, v in doc.items() if k != "metadata"} == {
                k: v for k, v in source.items() if k != "metadata"
            }, "tests apply rbac.yaml as is: the rendered RBAC must be the same"
    settings = _rendered_settings(rendered, monkeypatch)
    assert settings.auth == "oidc", "only the Trigger and the PingSource may call in a cluster"


@pytest.mark.kube
@pytest.mark.parametrize(
    ("name", "storage"), [("knative", "configmap"), ("s3", "s3"), ("oci", "oci")]
)
def test_each_overlay_selects_its_store_and_only_the_configmap_store_gets_a_role(
    name: str, storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = kustomize(RENDERED[name])
    assert _rendered_settings(rendered, monkeypatch).storage == storage
    # One request per server thread, over the processes the pod's CPU limit starts.
    requests_service = handler_service(rendered, "create")["spec"]["template"]
    data = find(rendered, "ConfigMap", SETTINGS_NAME)["data"]
    threads, processes = _pod_shape(requests_service, data, monkeypatch)
    assert requests_service["spec"]["containerConcurrency"] == threads * processes
    roles, bindings = of_kind(rendered, "Role"), of_kind(rendered, "RoleBinding")
    if storage == "configmap":
        assert roles and bindings
    else:
        assert roles == bindings == [], "a store outside the cluster needs no Kubernetes rights"


@pytest.mark.kube
def test_s3_overlay_reads_the_bucket_credentials_from_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = kustomize(RENDERED["s3"])
    assert _rendered_settings(rendered, monkeypatch).s3_bucket
    for handlers in ("create", "cleanup"):
        env_from = container(handler_service(rendered, handlers))["envFrom"]
        assert env_from == [
            {"configMapRef": {"name": SETTINGS_NAME}},
            {"secretRef": {"name": "build-context-s3"}},
        ]
    dead_letters = find(rendered, "Service", "build-context-dead-letters")
    assert "envFrom" not in container(dead_letters)


@pytest.mark.kube
def test_oci_overlay_mounts_the_pull_secret_where_the_docker_config_setting_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = kustomize(RENDERED["oci"])
    settings = _rendered_settings(rendered, monkeypatch)
    assert settings.oci_registry == "registry.example.com"
    config = Path(settings.oci_docker_config)
    for handlers in ("create", "cleanup"):
        service = handler_service(rendered, handlers)
        mounts = {m["name"]: m for m in container(service)["volumeMounts"]}
        volumes = {v["name"]: v for v in service["spec"]["template"]["spec"]["volumes"]}
        assert mounts["registry"] == {
            "name": "registry",
            "mountPath": str(config.parent),
            "readOnly": True,
        }
        assert volumes["registry"]["secret"] == {
            "secretName": "build-context-registry",
            "items": [{"key": ".dockerconfigjson", "path": config.name}],
        }


@pytest.mark.kube
def test_func_overlay_leaves_the_request_handler_to_func_deploy() -> None:
    rendered = kustomize(RENDERED["func"])
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("Service", "build-context") not in names
    assert {
        ("Service", "build-context-cleanup"),
        ("ServiceAccount", "build-context"),
        ("Role", "build-context"),
        ("Trigger", "build-context-requests"),
        ("PingSource", "build-context-cleanup"),
        ("ConfigMap", SETTINGS_NAME),
    } <= names


@pytest.mark.kube
def test_documented_overlay_sets_image_broker_and_schedule(overlay_dir: Path) -> None:
    rendered = kustomize(overlay_dir)
    for handlers in ("create", "cleanup"):
        image = container(handler_service(rendered, handlers))["image"]
        assert image == "registry.example.com/team/build-context:v1"
    for trigger in of_kind(rendered, "Trigger"):
        assert trigger["spec"]["broker"] == "remediation"
    assert find(rendered, "PingSource", "build-context-cleanup")["spec"]["schedule"] == "0 * * * *"
    replies = find(rendered, "Trigger", "build-context-replies")
    assert replies["spec"]["filter"]["attributes"]["source"] == Settings().event_source


# --- a real API server ------------------------------------------------------------------

kube = pytest.fixture(scope="module")(kube_apiserver)


@pytest.fixture(scope="module")
def crds_loaded(kube: KubeAPIServer) -> Iterator[kubernetes.dynamic.DynamicClient]:
    with kube.api_client() as client:
        load_crds(client)
        cache = Path(tempfile.mkdtemp(prefix="discovery-")) / "cache.json"
        yield kubernetes.dynamic.DynamicClient(client, cache_file=str(cache))
        shutil.rmtree(cache.parent)


def _namespace(dynamic: kubernetes.dynamic.DynamicClient) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    ensure_namespace(dynamic.client, name)
    return name


def _dry_run_create(
    dynamic: kubernetes.dynamic.DynamicClient, doc: Manifest, namespace: str
) -> Any:
    resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    return resource.create(
        body=doc,
        namespace=namespace if resource.namespaced else None,
        dry_run="All",
        query_params=[("fieldValidation", "Strict")],
    )


def _config_manifests() -> list[Manifest]:
    """Kubernetes objects kept in config/ (the PrometheusRule), if any."""
    return [
        doc
        for path in sorted((REPO_ROOT / "config").glob("*.yaml"))
        for doc in load_documents(path)
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
    ]


@pytest.mark.kube
@pytest.mark.parametrize("name", [*RENDERED, "user", "config"])
def test_api_server_accepts_every_manifest_strictly(
    name: str, crds_loaded: kubernetes.dynamic.DynamicClient, overlay_dir: Path
) -> None:
    docs = _config_manifests() if name == "config" else _render(name, overlay_dir)
    if not docs:
        assert name == "config"
        pytest.skip("no Kubernetes objects in config/")
    namespace = _namespace(crds_loaded)
    for doc in docs:
        try:
            _dry_run_create(crds_loaded, doc, namespace)
        except ApiException as error:
            raise AssertionError(
                f"{doc['kind']} {doc['metadata']['name']} rejected: {error.body}"
            ) from None
    core = kubernetes.client.CoreV1Api(crds_loaded.client)
    assert core.list_namespaced_config_map(namespace).items == [], "dry run created objects"


@pytest.mark.kube
def test_documented_kubectl_apply_k_is_accepted(
    kube: KubeAPIServer, crds_loaded: kubernetes.dynamic.DynamicClient
) -> None:
    namespace = _namespace(crds_loaded)
    result = subprocess.run(
        [
            str(kube_bin_dir() / "kubectl"),
            f"--kubeconfig={kube.kubeconfig_path}",
            "apply",
            "-k",
            str(KNATIVE_DIR),
            "-n",
            namespace,
            "--dry-run=server",
            "--validate=strict",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pingsource.sources.knative.dev/build-context-cleanup created (server dry run)" in (
        result.stdout
    )


MISSPELLINGS = [
    ("Service", "build-context", ["spec", "template", "spec", "containers", 0, "securityContext"]),
    ("Trigger", "build-context-requests", ["spec", "subscriber", "ref"]),
    ("PingSource", "build-context-cleanup", ["spec"]),
    ("Role", "build-context", ["rules", 0]),
    ("RoleBinding", "build-context-cleanup", ["roleRef"]),
    ("ConfigMap", SETTINGS_NAME, []),
]


@pytest.mark.kube
@pytest.mark.parametrize(("kind", "name", "where"), MISSPELLINGS, ids=[m[0] for m in MISSPELLINGS])
def test_api_server_rejects_a_misspelt_field(
    kind: str, name: str, where: list[Any], crds_loaded: kubernetes.dynamic.DynamicClient
) -> None:
    doc = copy.deepcopy(find(kustomize(KNATIVE_DIR), kind, name))
    target = doc
    for step in where:
        target = target[step]
    target["nmae"] = "typo"
    with pytest.raises(ApiException) as error:
        _dry_run_create(crds_loaded, doc, _namespace(crds_loaded))
    assert error.value.status in (400, 422)
    assert "unknown field" in error.value.body and "nmae" in error.value.body


@pytest.mark.kube
def test_roles_grant_each_handler_exactly_its_verbs(
    kube: KubeAPIServer, crds_loaded: kubernetes.dynamic.DynamicClient
) -> None:
    namespace, other = _namespace(crds_loaded), _namespace(crds_loaded)
    tokens = apply_rbac(kube, namespace)
    assert apply_rbac(kube, namespace).keys() == tokens.keys(), "applying twice is harmless"

    def allowed(token: str, ns: str, resource: str, verb: str) -> bool:
        with kube.client_for_token(token) as client:
            review = kubernetes.client.AuthorizationV1Api(client).create_self_subject_access_review(
                kubernetes.client.V1SelfSubjectAccessReview(
                    spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
                        resource_attributes=kubernetes.client.V1ResourceAttributes(
                            namespace=ns, resource=resource, verb=verb
                        )
                    )
                )
            )
            return bool(review.status.allowed)

    verbs = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
    resources = ("configmaps", "secrets", "pods", "serviceaccounts", "events")
    expected = {
        handlers: {("configmaps", verb) for verb in verbs}
        for handlers, verbs in HANDLER_VERBS.items()
    }
    for handlers, token in tokens.items():
        grants = {(r, v) for r in resources for v in verbs if allowed(token, namespace, r, v)}
        assert grants == expected[handlers], handlers
        assert not any(allowed(token, other, "configmaps", v) for v in verbs), handlers

    # The same, as real calls.
    name = "ctx-rbac"
    with kube.client_for_token(tokens["create"]) as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_config_map(
            namespace,
            kubernetes.client.V1ConfigMap(
                metadata=kubernetes.client.V1ObjectMeta(name=name), data={"k": "v"}
            ),
        )
        assert core.read_namespaced_config_map(name, namespace).data == {"k": "v"}
        core.patch_namespaced_config_map(name, namespace, {"metadata": {"labels": {"pin": "1"}}})
        assert [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items] == [
            name
        ]
        _all_forbidden(
            lambda: core.delete_namespaced_config_map(name, namespace),
            lambda: core.list_namespaced_secret(namespace),
            lambda: core.read_namespaced_secret("any", namespace),
            lambda: core.read_namespaced_config_map(name, other),
            lambda: core.create_namespaced_config_map(
                other,
                kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name=name)),
            ),
        )
    with kube.client_for_token(tokens["cleanup"]) as client:
        core = kubernetes.client.CoreV1Api(client)
        listed = core.list_namespaced_config_map(namespace).items
        assert [cm.metadata.name for cm in listed] == [name]
        assert core.read_namespaced_config_map(name, namespace).metadata.labels == {"pin": "1"}
        _all_forbidden(
            lambda: core.create_namespaced_config_map(
                namespace,
                kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name="x")),
            ),
            lambda: core.patch_namespaced_config_map(name, namespace, {"data": {"k": "w"}}),
            lambda: core.list_namespaced_secret(namespace),
            lambda: core.list_namespaced_config_map(other),
        )
        core.delete_namespaced_config_map(name, namespace)
        assert core.list_namespaced_config_map(namespace).items == []


def _all_forbidden(*calls: Callable[[], object]) -> None:
    for call in calls:
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403


def test_roles_match_what_the_configmap_store_calls() -> None:
    from function.stores.configmap import REQUIRED_VERBS

    assert {h: set(v) for h, v in REQUIRED_VERBS.items()} == {
        h: set(v) for h, v in HANDLER_VERBS.items()
    }


def test_documented_examples_build_contexts(server: FunctionServer) -> None:
    """docs/deploy.md sends examples/*.json; each must come back as buildcontext.created."""
    examples = sorted((REPO_ROOT / "examples").glob("*.json"))
    assert {p.stem.split("-")[0] for p in examples} == {"python", "nodejs", "go"}
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for path in examples:
        request = json.loads(path.read_text())
        if f"jq -r .sourceCode examples/{path.name}" in docs:
            assert request["sourceCode"], path.name
        reply = server.send(request)
        assert reply.type == contract.CREATED, (path.name, reply.data)


@pytest.mark.kube
def test_the_network_policy_override_in_security_md_renders_and_is_accepted(
    crds_loaded: kubernetes.dynamic.DynamicClient, tmp_path: Path
) -> None:
    text = (REPO_ROOT / "docs" / "security.md").read_text()
    block = text.split("# my-overlay/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "knative").symlink_to(KNATIVE_DIR)
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(block)
    rendered = kustomize(overlay)
    policy = find(rendered, "NetworkPolicy", "build-context")
    peers = policy["spec"]["ingress"][0]["from"]
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
    ]
    assert namespaces == ["knative-serving", "my-gateways"]
    assert policy["spec"]["ingress"][-1]["ports"] == [{"protocol": "TCP", "port": 8080}]
    _dry_run_create(crds_loaded, policy, _namespace(crds_loaded))
