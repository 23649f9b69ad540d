"""The alert rules: valid, unit-tested with promtool, and bound to the metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.contexts import example
from tests.support.server import PING, FunctionServer, break_storage
from tests.support.telemetry import Scrape, scrape

ROOT = Path(__file__).parents[1]
RULE = ROOT / "config" / "prometheusrule.yaml"
CRD = ROOT.parent / "shared" / "crds" / "monitoring.coreos.com_prometheusrules.yaml"
PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yaml"))
RULES_FILE = "build-context.rules.yaml"
SELECTOR = re.compile(r"\b(build_context_\w+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')


def rule_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULE.read_text())
    return document


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_document()["spec"]["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/setup (Debian package prometheus)"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The rule groups as a plain Prometheus rule file, beside copies of the promtool tests."""
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(rule_document()["spec"]))
    for test in PROMTOOL_TESTS:
        shutil.copy(test, tmp_path / test.name)
    return tmp_path


def test_the_rule_is_a_valid_prometheusrule(rules_dir: Path) -> None:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    document = rule_document()
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(document, _python_patterns(version["schema"]["openAPIV3Schema"]))
    checked = promtool("check", "rules", RULES_FILE, cwd=rules_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {
        "BuildContextRepeatedFailures",
        "BuildContextFailureRatioHigh",
        "BuildContextCreationSlow",
        "BuildContextHashSlow",
        "BuildContextStorageSlow",
        "BuildContextCleanupNotRunning",
        "BuildContextCleanupFailing",
        "BuildContextSendersRefused",
        "BuildContextQuotaExceeded",
    } <= {rule["alert"] for rule in rules()}


def _python_patterns(schema: Any) -> Any:
    """Go's regexps take flags after `^` (`^(?i)...`); Python's want them first."""
    if isinstance(schema, dict):
        return {
            k: re.sub(r"^\^\(\?(\w+)\)", r"(?\1)^", v)
            if k == "pattern" and isinstance(v, str)
            else _python_patterns(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_python_patterns(v) for v in schema]
    return schema


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[t.stem for t in PROMTOOL_TESTS])
def test_promtool_unit_tests(rules_dir: Path, test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", test_file.read_text()))
    assert tested, f"{test_file.name} tests no alert"


def test_every_series_selector_in_the_rules_matches_what_the_function_exports(
    server: FunctionServer,
) -> None:
    assert server.send(example("python")).type == "buildcontext.created"
    assert server.send({"lambdaFunction": "x", "runtime": "cobol"}).type == "buildcontext.failed"
    assert server.send({}, type=PING).status == 200
    exported = scrape(server)
    selectors = [s for rule in rules() for s in SELECTOR.findall(rule["expr"])]
    assert len(selectors) >= len(rules())
    for name, matchers in selectors:
        wanted = {k: v for k, op, v in MATCHER.findall(matchers) if op == "="}
        matching = [
            s
            for s in exported.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
        ]
        assert matching, f"no exported series matches {name}{{{matchers}}}"


def _series(scrapes: list[Scrape], labels: dict[str, str]) -> list[dict[str, str]]:
    """promtool input series, one sample a minute: each scrape holds for five minutes, the last
    for the rest; a series not yet exported is missing (`_`), as it is for Prometheus."""
    keys: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    for index, taken in enumerate(scrapes):
        for sample in taken.samples:
            key = (sample.name, tuple(sorted({**sample.labels, **labels}.items())))
            keys.setdefault(key, ["_"] * index)
            keys[key].append(repr(sample.value))
        for values in keys.values():
            values += ["_"] * (index + 1 - len(values))
    minutes = [5] * (len(scrapes) - 1) + [26]
    series = []
    for (name, label_items), values in sorted(keys.items()):
        text = ",".join(f'{k}="{v}"' for k, v in label_items)
        spread = [value for value, n in zip(values, minutes, strict=True) for _ in range(n)]
        series.append({"series": f"{name}{{{text}}}", "values": " ".join(spread)})
    return series


def _expected(alert: str, labels: dict[str, str]) -> dict[str, Any]:
    (rule,) = [r for r in rules() if r.get("alert") == alert]

    def render(template: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)

    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()},
    }


def test_a_storage_outage_fires_the_failure_alerts_on_the_scraped_series(
    server: FunctionServer, rules_dir: Path
) -> None:
    assert server.send(example("python")).type == "buildcontext.created"
    before = scrape(server)
    break_storage(server)
    replies = [server.send(example("go"))]
    first = scrape(server)
    replies += [server.send(example("go")) for _ in range(24)]
    during = scrape(server)
    assert {r.data["reason"] for r in replies} == {"StorageUnavailable"}
    assert during.value("build_context_requests_total", reason="StorageUnavailable") == 25

    namespace = {"namespace": "build-context", "pod": "build-context-00001-deployment-1"}
    test = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a storage outage, scraped from the running function",
                "interval": "1m",
                "input_series": _series([before, first, during], namespace),
                "alert_rule_test": [
                    {
                        "eval_time": "4m",
                        "alertname": "BuildContextRepeatedFailures",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "BuildContextRepeatedFailures",
                        "exp_alerts": [
                            _expected(
                                "BuildContextRepeatedFailures",
                                {"namespace": "build-context", "reason": "StorageUnavailable"},
                            )
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "BuildContextFailureRatioHigh",
                        "exp_alerts": [
                            _expected(
                                "BuildContextFailureRatioHigh", {"namespace": "build-context"}
                            )
                        ],
                    },
                ],
            }
        ],
    }
    (rules_dir / "outage.yaml").write_text(json.dumps(test, indent=1))
    result = promtool("test", "rules", "outage.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
