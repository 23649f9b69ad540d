"""The Grafana dashboard: generated from code and current, every query valid PromQL (promtool),
and every series it names one the running function really exports."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from function import dashboard
from tests.support.contexts import example
from tests.support.kube import KubeAPIServer
from tests.support.server import PING, FunctionServer
from tests.support.telemetry import Scrape, scrape
from tests.test_alert_rules import MATCHER, SELECTOR, promtool
from tests.test_cleanup import age, create

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}
CONFIGMAP_SERIES = ("build_context_configmap_usage_bytes", "build_context_configmap_objects")


def model() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(dashboard.JSON_PATH.read_text())
    return loaded


def promql(expr: str) -> str:
    """What Prometheus receives once Grafana has put its variables in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def check_with_promtool(expressions: list[str], folder: Path) -> str:
    """promtool parses each expression as a recording rule; returns its complaints."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(expressions)
                ],
            }
        ]
    }
    (folder / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "dashboard.rules.yaml", cwd=folder)
    return "" if checked.returncode == 0 else checked.stdout + checked.stderr


def selectors() -> list[tuple[str, dict[str, str]]]:
    """(series name, its `=` matchers) of every query and variable of the dashboard."""
    found = []
    texts = [*dashboard.queries(model()), *dashboard.variable_queries(model())]
    for name, matchers in (s for text in texts for s in SELECTOR.findall(text)):
        found.append((name, {k: v for k, op, v in MATCHER.findall(matchers) if op == "="}))
    return found


def unmatched(exported: Scrape, wanted: list[tuple[str, dict[str, str]]]) -> list[str]:
    return [
        f"{name}{labels}"
        for name, labels in wanted
        if not any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            for s in exported.samples
        )
    ]


def test_the_files_in_config_are_what_the_code_generates() -> None:
    assert dashboard.main(["--check"]) == 0, "run: .venv/bin/python -m function.dashboard"
    configmap = yaml.safe_load(dashboard.CONFIGMAP_PATH.read_text())
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["build-context.json"]) == model()
    kubernetes_validate.validate(configmap, "1.33", strict=True)


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    titles = " | ".join(
        str(panel["title"])
        for panel in model()["panels"]  # type: ignore[attr-defined]
    )
    for wanted in (
        "Failures by reason",
        "Creation latency by store",
        "Stage latency, p95, by stage and store",
        "Reuse ratio",
        "Archive size",
        "Storage retries by store",
        "ConfigMap store: archive bytes per namespace",
        "Cleanup runs by outcome",
        "Cleanup: contexts by action and store",
    ):
        assert wanted in titles
    names = {name for name, _ in selectors()}
    assert {
        "build_context_requests_total",
        "build_context_reuses_total",
        "build_context_request_duration_seconds_bucket",
        "build_context_stage_duration_seconds_bucket",
        "build_context_archive_size_bytes_bucket",
        "build_context_storage_retries_total",
        *CONFIGMAP_SERIES,
        "build_context_cleanup_runs_total",
        "build_context_cleanup_contexts_total",
        "build_context_cleanup_last_run_timestamp_seconds",
    } <= names


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    expressions = [promql(q) for q in dashboard.queries(model())]
    assert len(expressions) >= 20
    assert check_with_promtool(expressions, tmp_path) == ""
    for variable in dashboard.variable_queries(model()):
        assert re.fullmatch(r"label_values\(build_context_\w+, \w+\)", variable), variable
    # and the check can fail: a query with a typo is refused
    broken = expressions[0].replace("sum(", "sum((", 1)
    assert "parse" in check_with_promtool([broken], tmp_path).lower()


def test_every_series_the_dashboard_names_is_exported(server: FunctionServer) -> None:
    """Everything the dashboard shows happens once: a context created, reused, a failure, and a
    cleanup run that deletes an expired context."""
    old = create(server, "payments-fix", 1)
    create(server, "payments-fix", 2)
    assert server.send(example("python")).type == "buildcontext.created"
    assert server.send(example("python")).data["reused"] is True
    assert server.send({"lambdaFunction": "x", "runtime": "cobol"}).type == "buildcontext.failed"
    age(old, timedelta(days=8))
    cleaned = server.send({}, type=PING)
    assert cleaned.data["stores"][0]["deleted"] == 1, cleaned
    wanted = [(n, labels) for n, labels in selectors() if n not in CONFIGMAP_SERIES]
    assert unmatched(scrape(server), wanted) == []
    assert unmatched(scrape(server), [("build_context_no_such_series", {})]), "the check bites"


@pytest.mark.kube
def test_the_configmap_capacity_series_are_exported_by_the_configmap_store(
    kube: KubeAPIServer, tmp_path: Path
) -> None:
    namespace = f"dash-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespace({"metadata": {"name": namespace}})
    server = FunctionServer(
        {"BUILD_CONTEXT_STORAGE": "configmap", **kube.function_env(namespace)}, tmp_path
    ).start()
    try:
        assert server.send(example("python")).type == "buildcontext.created"
        wanted = [(n, labels) for n, labels in selectors() if n in CONFIGMAP_SERIES]
        assert len(wanted) == 2
        assert unmatched(scrape(server), wanted) == []
    finally:
        server.stop()
