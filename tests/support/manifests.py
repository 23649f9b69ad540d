"""The deployment manifests under knative/, as the tests read and render them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.support.kube import CRD_DIR, REPO_ROOT, kube_bin_dir

KNATIVE_DIR = REPO_ROOT / "knative"
BASE_DIR = KNATIVE_DIR / "base"
SETTINGS_CONFIGMAP = BASE_DIR / "settings-configmap.yaml"
RBAC_MANIFEST = BASE_DIR / "rbac.yaml"
FUNC_YAML = REPO_ROOT / "func.yaml"

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    """Every file under knative/ holding whole objects (kustomization files hold patches)."""
    return sorted(p for p in KNATIVE_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")


def raw_manifests() -> list[Manifest]:
    return [doc for path in manifest_files() for doc in load_documents(path)]


def kustomize(directory: Path) -> list[Manifest]:
    """Render a kustomization exactly as `kubectl apply -k` would."""
    result = subprocess.run(
        [str(kube_bin_dir() / "kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: Iterable[Manifest], kind: str, name: str) -> Manifest:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name!r}")


def of_kind(docs: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def container(service: Manifest) -> Manifest:
    containers: list[Manifest] = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, service["metadata"]["name"]
    return containers[0]


def env_value(service: Manifest, name: str) -> str | None:
    for var in container(service).get("env", []):
        if var["name"] == name:
            value: str = var["value"]
            return value
    return None


def handler_service(docs: Iterable[Manifest], handlers: str) -> Manifest:
    """The Knative Service whose container runs with BUILD_CONTEXT_HANDLERS=handlers."""
    found = [
        doc
        for doc in of_kind(docs, "Service")
        if doc["apiVersion"].startswith("serving.knative.dev/")
        and env_value(doc, "BUILD_CONTEXT_HANDLERS") == handlers
    ]
    assert len(found) == 1, f"{len(found)} Services run BUILD_CONTEXT_HANDLERS={handlers}"
    return found[0]


def handler_accounts() -> dict[str, str]:
    """ServiceAccount of each handler ("create", "cleanup"), read from the base Services."""
    docs = raw_manifests()
    return {
        handlers: handler_service(docs, handlers)["spec"]["template"]["spec"]["serviceAccountName"]
        for handlers in ("create", "cleanup")
    }


def crd_schemas() -> dict[tuple[str, str], Manifest]:
    """openAPIV3Schema of each (apiVersion, kind) served by the CRDs in ../shared/crds."""
    schemas: dict[tuple[str, str], Manifest] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(
    schema: Manifest, value: Any, path: str = "", allowed: frozenset[str] = frozenset()
) -> list[str]:
    """Fields of value that schema does not declare, even where it preserves unknown fields.

    The Knative CRDs keep `x-kubernetes-preserve-unknown-fields` on Trigger.spec and on
    delivery specs, so the API server accepts a misspelt field there; this walk does not.
    """
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if where in allowed or where in ("apiVersion", "kind", "metadata"):
                continue
            if properties is not None and key in properties:
                found += unknown_fields(properties[key], item, where, allowed)
            elif isinstance(extra, dict):
                found += unknown_fields(extra, item, where, allowed)
            elif properties is not None:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(schema["items"], item, f"{path}[{index}]", allowed)
    return found
