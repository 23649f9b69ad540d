"""The Grafana dashboard, generated from code: `python -m function.dashboard [--check]`.

Writes `config/grafana-dashboard.json` (import it in Grafana) and
`config/grafana-dashboard-configmap.yaml` (a ConfigMap labelled `grafana_dashboard: "1"`, which
the Grafana sidecar of kube-prometheus-stack and the Grafana Helm chart load). Built with
grafana-foundation-sdk, a development dependency (requirements-dev.txt): the function never
imports this module. `--check` fails when the files in config/ differ from what the code makes.

Every query uses only the series the function exports (docs/observability.md);
tests/test_dashboard.py parses each one with promtool and matches its selectors against a
scrape of the running function.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
)

from .settings import Settings

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "config" / "grafana-dashboard.json"
CONFIGMAP_PATH = ROOT / "config" / "grafana-dashboard-configmap.yaml"
UID = "build-context"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NAMESPACE = 'namespace=~"$namespace"'
"""Every selector is narrowed to the chosen namespaces (the scrape's target label)."""
RATE = "$__rate_interval"
CONFIGMAP_LEGEND = "{{namespace}} {{exported_namespace}}"
"""The ConfigMap gauges carry the namespace of the ConfigMaps as `namespace`; a scrape that
does not honour the target's labels renames it `exported_namespace`, beside the pod's."""


def _query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref)


def _against_cap(panel: timeseries.Panel, cap: float) -> timeseries.Panel:
    """A panel with its cap drawn as a red line, amber from 80 % of it."""
    return panel.thresholds(
        builders.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(None, "green"), Threshold(0.8 * cap, "orange"), Threshold(cap, "red")])
    ).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
    )


def _series(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _stat(
    title: str,
    description: str,
    unit: str,
    query: prometheus.Dataquery,
    steps: list[Threshold],
    width: int = 6,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(5)
        .with_target(query)
        .thresholds(builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.BACKGROUND)
    )


def _quantiles(metric: str, by: str, where: str = "") -> list[prometheus.Dataquery]:
    matchers = ", ".join(m for m in (NAMESPACE, where) if m)
    labels = ", ".join(f"{{{{{label}}}}}" for label in by.split(", "))
    return [
        _query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"p{int(q * 100)} {labels}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def build(settings: Settings | None = None) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    settings = settings or Settings()
    requests = f"build_context_requests_total{{{NAMESPACE}}}"
    failed = f'build_context_requests_total{{{NAMESPACE}, outcome="failed"}}'
    created = f'build_context_requests_total{{{NAMESPACE}, outcome="created"}}'
    cap_bytes = float(settings.configmap_namespace_max_bytes)
    cap_count = float(settings.configmap_namespace_max_count)
    green, amber, red = "green", "orange", "red"
    dashboard = (
        builders.Dashboard("build-context")
        .uid(UID)
        .description(
            "Requests, failures, latency by stage and store, reuse, archive sizes, storage "
            "retries, ConfigMap capacity and cleanup of the build-context function. Generated "
            "by function/dashboard.py; edit the code, not this JSON."
        )
        .tags(["build-context", "knative"])
        .refresh("30s")
        .time("now-6h", "now")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            builders.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(build_context_requests_total, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_row(builders.Row("Requests"))
        .with_panel(
            _stat(
                "Success rate (1 h)",
                "Created / all requests over the last hour; the story wants more than 99 %.",
                "percentunit",
                _query(f"sum(rate({created}[1h])) / sum(rate({requests}[1h]))"),
                [Threshold(None, red), Threshold(0.99, amber), Threshold(0.999, green)],
            )
        )
        .with_panel(
            _stat(
                "Reuse ratio (1 h)",
                "Share of created replies answered by an existing context (reused: true).",
                "percentunit",
                _query(
                    f"sum(rate(build_context_reuses_total{{{NAMESPACE}}}[1h])) "
                    f"/ sum(rate({created}[1h]))"
                ),
                [Threshold(None, "blue")],
            )
        )
        .with_panel(
            _stat(
                "Requests per second",
                "All requests, every store and runtime.",
                "reqps",
                _query(f"sum(rate({requests}[{RATE}]))"),
                [Threshold(None, "blue")],
            )
        )
        .with_panel(
            _stat(
                "Failures (1 h)",
                "Failed requests in the last hour, any reason.",
                "short",
                _query(f"sum(increase({failed}[1h]))"),
                [Threshold(None, green), Threshold(1, amber), Threshold(20, red)],
            )
        )
        .with_panel(
            _series(
                "Requests by outcome and runtime",
                "Requests per second, created or failed, per runtime.",
                "reqps",
                _query(
                    f"sum by (outcome, runtime) (rate({requests}[{RATE}]))",
                    "{{outcome}} {{runtime}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Failures by reason",
                "Failed requests per second by the reply's reason. StorageUnavailable and "
                "InternalError are ours; the others are the caller's.",
                "reqps",
                _query(f"sum by (reason) (rate({failed}[{RATE}]))", "{{reason}}"),
            )
        )
        .with_row(builders.Row("Latency"))
        .with_panel(
            _series(
                "Creation latency by store",
                "CloudEvent in to reply out, created requests: p50, p95, p99 per store. "
                "The story's target is p95 under 5 s.",
                "s",
                *_quantiles("build_context_request_duration_seconds", "store", 'outcome="created"'),
            )
        )
        .with_panel(
            _series(
                "Stage latency, p95, by stage and store",
                "validate (checks and syntax), render, archive (pack and hash; target p95 "
                "under 100 ms), store (including retries; target p95 under 1 s).",
                "s",
                _query(
                    "histogram_quantile(0.95, sum by (stage, store, le) "
                    f"(rate(build_context_stage_duration_seconds_bucket{{{NAMESPACE}}}[{RATE}])))",
                    "{{stage}} {{store}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Stage latency, p50, by stage and store",
                "The typical request's time per stage.",
                "s",
                _query(
                    "histogram_quantile(0.5, sum by (stage, store, le) "
                    f"(rate(build_context_stage_duration_seconds_bucket{{{NAMESPACE}}}[{RATE}])))",
                    "{{stage}} {{store}}",
                ),
            )
        )
        .with_panel(
            _series(
                "Requests by runtime and store",
                "Created requests per second, by where they went.",
                "reqps",
                _query(
                    f"sum by (store, runtime) (rate({created}[{RATE}]))", "{{store}} {{runtime}}"
                ),
            )
        )
        .with_row(builders.Row("Archives and storage"))
        .with_panel(
            _series(
                "Archive size",
                "Stored or reused archives: p50, p95, p99 per store.",
                "bytes",
                *_quantiles("build_context_archive_size_bytes", "store"),
            )
        )
        .with_panel(
            _series(
                "Storage retries by store",
                "Storage calls retried after a transient error, per second; a steady rate "
                "means the store is struggling (StorageUnavailable follows when retries run out).",
                "ops",
                _query(
                    f"sum by (store) (rate(build_context_storage_retries_total{{{NAMESPACE}}}"
                    f"[{RATE}]))",
                    "{{store}}",
                ),
            )
        )
        .with_panel(
            _against_cap(
                _series(
                    "ConfigMap store: archive bytes per namespace",
                    "Archive bytes in our ConfigMaps against the cap "
                    f"BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_BYTES (default {cap_bytes:,.0f}, the "
                    "red line; regenerate the dashboard for another cap). At the cap new contexts "
                    "go to the overflow store or fail with StorageUnavailable.",
                    "bytes",
                    _query(
                        "max by (namespace, exported_namespace) "
                        f"(build_context_configmap_usage_bytes{{{NAMESPACE}}})",
                        CONFIGMAP_LEGEND,
                    ),
                ),
                cap_bytes,
            )
        )
        .with_panel(
            _against_cap(
                _series(
                    "ConfigMap store: ConfigMaps per namespace",
                    "Our ConfigMaps against the cap BUILD_CONTEXT_CONFIGMAP_NAMESPACE_MAX_COUNT "
                    f"(default {cap_count:,.0f}, the red line).",
                    "short",
                    _query(
                        "max by (namespace, exported_namespace) "
                        f"(build_context_configmap_objects{{{NAMESPACE}}})",
                        CONFIGMAP_LEGEND,
                    ),
                ),
                cap_count,
            )
        )
        .with_row(builders.Row("Cleanup"))
        .with_panel(
            _stat(
                "Since the last cleanup",
                "Time since a cleanup run (not a dry run) last finished; the PingSource runs "
                "one every 15 minutes.",
                "s",
                _query(
                    "time() - max(build_context_cleanup_last_run_timestamp_seconds"
                    f"{{{NAMESPACE}}} > 0)"
                ),
                [Threshold(None, green), Threshold(1800, amber), Threshold(3600, red)],
            )
        )
        .with_panel(
            _stat(
                "Contexts deleted (24 h)",
                "Expired contexts cleanup deleted over the last day, every store.",
                "short",
                _query(
                    "sum(increase(build_context_cleanup_contexts_total"
                    f'{{{NAMESPACE}, action="deleted", dry_run="false"}}[24h]))'
                ),
                [Threshold(None, "blue")],
            )
        )
        .with_panel(
            _stat(
                "Cleanup runs with errors (24 h)",
                "Runs in which a store could not be listed or a context not deleted.",
                "short",
                _query(
                    "sum(increase(build_context_cleanup_runs_total"
                    f'{{{NAMESPACE}, outcome="errors"}}[24h]))'
                ),
                [Threshold(None, green), Threshold(1, red)],
            )
        )
        .with_panel(
            _stat(
                "Cleanup duration, p95 (24 h)",
                "How long a cleanup run takes.",
                "s",
                _query(
                    "histogram_quantile(0.95, sum by (le) (rate("
                    f"build_context_cleanup_duration_seconds_bucket{{{NAMESPACE}}}[24h])))"
                ),
                [Threshold(None, "blue")],
            )
        )
        .with_panel(
            _series(
                "Cleanup runs by outcome",
                "Runs per hour: ok, or errors; dry runs apart.",
                "short",
                _query(
                    "sum by (outcome, dry_run) (increase(build_context_cleanup_runs_total"
                    f"{{{NAMESPACE}}}[1h]))",
                    "{{outcome}} (dry run: {{dry_run}})",
                ),
            )
        )
        .with_panel(
            _series(
                "Cleanup: contexts by action and store",
                "Per hour: deleted, retained (by rule) or failed, per store.",
                "short",
                _query(
                    "sum by (store, action, rule) (increase(build_context_cleanup_contexts_total"
                    f'{{{NAMESPACE}, dry_run="false"}}[1h]))',
                    "{{action}} {{rule}} {{store}}",
                ),
            )
        )
    )
    encoded: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    return encoded


def queries(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [
        str(target["expr"])
        for panel in model.get("panels", [])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def variable_queries(model: dict[str, Any]) -> list[str]:
    """The queries of its template variables (Grafana's `label_values(metric, label)`)."""
    return [
        str(variable["query"])
        for variable in model.get("templating", {}).get("list", [])
        if variable.get("type") == "query"
    ]


def rendered() -> dict[Path, str]:
    """The files in config/, as this code makes them."""
    model = build()
    text = json.dumps(model, indent=2, sort_keys=True) + "\n"
    body = "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())
    configmap = (
        "# The build-context Grafana dashboard for the Grafana sidecar (label grafana_dashboard).\n"
        "# Generated by `python -m function.dashboard`; do not edit. Apply it in the namespace\n"
        "# the sidecar watches, e.g.:\n"
        "#   kubectl apply -n monitoring -f config/grafana-dashboard-configmap.yaml\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: build-context-dashboard\n"
        "  labels:\n"
        '    grafana_dashboard: "1"\n'
        "    app.kubernetes.io/name: build-context\n"
        "    app.kubernetes.io/part-of: build-context\n"
        "data:\n"
        "  build-context.json: |\n" + body
    )
    return {JSON_PATH: text, CONFIGMAP_PATH: configmap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m function.dashboard", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail when config/ differs; write nothing"
    )
    args = parser.parse_args(argv)
    stale = [path for path, text in rendered().items() if not _same(path, text)]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python -m function.dashboard")
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


def _same(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text


if __name__ == "__main__":
    sys.exit(main())
