"""Metrics, traces and logs of the real server: what an SRE sees for every outcome."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from function.errors import InvalidRequest, StorageUnavailable
from function.retry import RetryPolicy
from function.telemetry import Telemetry
from function.telemetry.exporters import _build_exporters
from tests.conftest import StartServer
from tests.support.contexts import example
from tests.support.server import PING, FunctionServer, break_storage, encode
from tests.support.telemetry import OtlpReceiver, data_points, scrape, total
from tests.test_http import FAILURES

DOCS = Path(__file__).parents[1] / "docs" / "observability.md"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
RFC1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""What Kubernetes calls a DNS label, written out here rather than taken from the function,
so that a test of what reaches the log does not share the function's own filter."""


def outcome_lines(server: FunctionServer, request_id: str) -> list[dict[str, Any]]:
    return [line for line in server.log_lines() if line.get("requestId") == request_id]


def test_metrics_are_served_on_the_function_port_with_the_documented_names(
    server: FunctionServer,
) -> None:
    request = example("python")
    first = server.send(request)
    second = server.send(request)
    failed = server.send({"lambdaFunction": "x", "runtime": "cobol", "sourceCode": "1"})
    ping = server.send({}, type=PING)
    assert first.type == second.type == "buildcontext.created", (first, second)
    assert failed.type == "buildcontext.failed" and ping.status == 200, (failed, ping)
    metrics = scrape(server)

    assert metrics.value("build_context_requests_total", outcome="created") == 2
    assert (
        metrics.value("build_context_requests_total", outcome="failed", reason="UnsupportedRuntime")
        == 1
    )
    assert metrics.value("build_context_reuses_total", runtime="python") == 1
    for stage in ("validate", "render", "archive", "store"):
        assert metrics.value("build_context_stage_duration_seconds_count", stage=stage) >= 2, stage
    assert metrics.value("build_context_request_duration_seconds_count", outcome="created") == 2
    assert metrics.value("build_context_request_duration_seconds_bucket", le="5.0") == 3
    assert metrics.value("build_context_archive_size_bytes_count") == 2
    assert metrics.value("build_context_storage_retries_total", store="filesystem") == 0
    assert metrics.value("build_context_cleanup_runs_total", outcome="ok") == 1
    assert metrics.value("build_context_cleanup_last_run_timestamp_seconds") > 1.7e9

    allowed = {"outcome", "reason", "runtime", "store", "stage", "le", "action", "rule", "dry_run"}
    allowed.add("worker")  # the server process, with BUILD_CONTEXT_PROCESSES above 1
    allowed |= {"status", "limit"}  # refused senders (HTTP status), per-function caps (which)
    forbidden = {request["lambdaFunction"], first.data["contentHash"], first.data["imageTag"]}
    for sample in metrics.samples:
        labels = {k for k in sample.labels if not k.startswith("otel_scope_")}
        assert labels <= allowed, sample
        assert not forbidden & set(sample.labels.values()), sample

    documented = set(re.findall(r"^\| `(build_context_\w+)` \|", DOCS.read_text(), re.MULTILINE))
    assert set(metrics.families()) == documented, "docs/observability.md lists other metrics"


def test_every_failure_path_has_its_metric_log_line_and_reply(server: FunctionServer) -> None:
    cases: list[tuple[str, str, Any]] = [
        (f"fail-{i}", reason, data) for i, (reason, data, _) in enumerate(FAILURES)
    ]
    good = server.send(example("python"), id="good-1")
    assert good.type == "buildcontext.created", good
    Path(good.data["storage"]["path"]).with_name("context.json").write_text("{not json")
    cases.append(("internal-1", "InternalError", example("python")))
    replies = {case_id: server.send(data, id=case_id) for case_id, _, data in cases}
    break_storage(server)
    outage = server.send(example("go"), id="outage-1")
    cases.append(("outage-1", "StorageUnavailable", example("go")))
    replies["outage-1"] = outage
    metrics = scrape(server)

    for case_id, reason, data in cases:
        reply = replies[case_id]
        assert reply.type == "buildcontext.failed", (case_id, reply)
        assert reply.data["reason"] == reason and reply.data["requestId"] == case_id, reply
        assert reply.data["retryable"] is (reason == "StorageUnavailable"), reply
        (line,) = outcome_lines(server, case_id)
        assert line["message"] == "buildcontext.failed", line
        assert line["reason"] == reason and line["outcome"] == "failed", line
        assert line["store"] == "filesystem" and line["runtime"], line
        assert isinstance(line["durationMs"], float | int) and line["cause"], line
        assert line["level"] == (
            "WARNING" if reason not in ("StorageUnavailable", "InternalError") else "ERROR"
        )
        assert line["traceId"] and line["spanId"], line
        name = data.get("lambdaFunction")
        # only a valid name reaches the log line; a bad one is in the reply's message
        valid = isinstance(name, str) and RFC1123_LABEL.fullmatch(name) is not None
        assert line["function"] == (name if valid else None), line
    internal = outcome_lines(server, "internal-1")[0]
    assert "JSONDecodeError" in internal["cause"] and "Traceback" in internal["exception"]
    assert "Error" in outcome_lines(server, "outage-1")[0]["cause"]

    (created,) = outcome_lines(server, "good-1")
    assert created["message"] == "buildcontext.created" and created["level"] == "INFO"
    assert created["contentHash"] == good.data["contentHash"]
    assert created["function"] == good.data["lambdaFunction"] and created["runtime"] == "python"

    for reason in {reason for _, reason, _ in cases}:
        expected = sum(1 for _, r, _ in cases if r == reason)
        got = metrics.value("build_context_requests_total", outcome="failed", reason=reason)
        assert got == expected, (reason, got, expected)
    assert metrics.value("build_context_request_duration_seconds_count", outcome="failed") == len(
        cases
    )


def test_logs_hold_no_source_code_and_no_credentials(server: FunctionServer) -> None:
    marker = f"MK{uuid.uuid4().hex[:10]}"
    password = f"pw{uuid.uuid4().hex}"
    sent = [
        {"lambdaFunction": "x", "runtime": "nodejs", "sourceCode": f"function f( {{{marker}\n"},
        {"lambdaFunction": "x", "sourceCode": f"def broken(:  # {marker}\n"},
        {"lambdaFunction": "ok", "sourceCode": f"print('{marker}')\n"},
        {
            "lambdaFunction": "x",
            "sourceCode": "1",
            "dependencies": [f"pkg @ https://user:{password}@example.com/pkg.whl"],
        },
    ]
    replies = [server.send(data) for data in sent]
    assert [r.data.get("reason") for r in replies] == [
        "InvalidSource",
        "InvalidSource",
        None,
        "InvalidRequest",
    ], replies
    assert marker in replies[0].data["message"], "the caller does get the offending token"
    log = server.log()
    assert marker not in log and password not in log
    assert marker not in scrape(server).text


def _traced_request(
    server: FunctionServer, extensions: dict[str, str], headers: dict[str, str]
) -> tuple[str, str]:
    request_id = str(uuid.uuid4())
    ce_headers, body = encode(example("nodejs"), id=request_id, extensions=extensions)
    response = requests.post(server.url, headers={**ce_headers, **headers}, data=body, timeout=30)
    assert response.headers.get("ce-type") == "buildcontext.created", response.text
    return request_id, response.headers["ce-traceparent"]


def test_the_trace_runs_from_the_request_event_into_the_reply(server: FunctionServer) -> None:
    request_id, reply_parent = _traced_request(server, {"traceparent": TRACEPARENT}, {})
    version, trace_id, span_id, flags = reply_parent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id not in (PARENT_SPAN, "0" * 16), "the reply's parent is our own span"
    (line,) = outcome_lines(server, request_id)
    assert line["traceId"] == TRACE_ID and line["spanId"] == span_id

    _, from_header = _traced_request(server, {}, {"traceparent": TRACEPARENT})
    assert from_header.split("-")[1] == TRACE_ID, "the HTTP traceparent is the fallback"

    _, fresh = _traced_request(server, {}, {})
    assert (
        re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fresh) and TRACE_ID not in fresh
    )


def test_spans_per_stage_and_storage_call_go_over_otlp(
    start_server: StartServer, otlp: OtlpReceiver
) -> None:
    server = start_server(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        OTEL_METRIC_EXPORT_INTERVAL="600000",
        OTEL_SERVICE_NAME="build-context-test",
        BUILD_CONTEXT_PROCESSES="2",
    )
    request_id, _ = _traced_request(server, {"traceparent": TRACEPARENT}, {})
    assert server.stop() == 0  # the shutdown flushes spans and the last metric export
    # each process exports its own cumulative series, told apart by the collector
    assert len(otlp.metric_sources()) == 2, otlp.metric_sources()

    spans = {s.name: s for s in otlp.spans()}
    root = spans["process remediation.buildcontext.requested"]
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == PARENT_SPAN
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["cloudevents.event_id"] == request_id
    for stage in ("validate", "render", "archive", "store"):
        span = spans[f"build_context.{stage}"]
        assert span.trace_id == root.trace_id and span.parent_span_id == root.span_id, stage
    storage = spans["build_context.storage.put_if_absent"]
    assert storage.parent_span_id == spans["build_context.store"].span_id
    assert {"build_context.requests", "build_context.stage.duration"} <= otlp.metric_names()
    # where OTLP carries the metrics, their exemplars point into the request's trace
    assert TRACE_ID in otlp.exemplar_trace_ids("build_context.stage.duration")


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, AlwaysOffExemplarFilter),
        ({"OTEL_METRICS_EXEMPLAR_FILTER": "always_on"}, AlwaysOnExemplarFilter),
        ({"OTEL_METRICS_EXEMPLAR_FILTER": "trace_based"}, TraceBasedExemplarFilter),
    ],
)
def test_no_exemplars_are_offered_when_only_prometheus_exports(
    environ: dict[str, str], wanted: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Prometheus exporter drops exemplars, so without OTLP metrics none are sampled (a
    record costs 2.6x more with them); an operator's explicit filter still wins. The SDK keeps
    the filter in its private configuration: there is no public accessor."""
    for name in ("OTEL_METRICS_EXEMPLAR_FILTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    exporters = _build_exporters(os.environ)
    try:
        assert type(exporters.meter_provider._sdk_config.exemplar_filter) is wanted  # type: ignore[attr-defined]
    finally:
        exporters.shutdown()


def test_the_log_level_is_configurable(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_LOG_LEVEL="ERROR")
    invalid = server.send({"lambdaFunction": "x", "runtime": "cobol"}, id="quiet-1")
    break_storage(server)
    outage = server.send(example("python"), id="loud-1")
    assert invalid.type == outage.type == "buildcontext.failed"
    assert outcome_lines(server, "quiet-1") == []
    assert [line["level"] for line in outcome_lines(server, "loud-1")] == ["ERROR"]


class FlakyStorageCallDouble:
    """Test double of one storage call that fails `failures` times with a transient error."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageUnavailable(f"attempt {self.calls}: connection reset")
        return "stored"


def test_transient_storage_errors_are_retried_with_bounded_backoff_and_counted() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(MeterProvider(metric_readers=[reader]), TracerProvider())
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.15, deadline=10)
    delays: list[float] = []

    def call(operation: FlakyStorageCallDouble) -> str:
        return policy.call(
            operation,
            transient=lambda error: isinstance(error, StorageUnavailable),
            on_retry=lambda attempt, error: telemetry.retried("s3", attempt, error),
            sleep=delays.append,
        )

    def retries() -> int:
        return total(reader, "build_context.storage.retries", store="s3")

    assert call(FlakyStorageCallDouble(failures=2)) == "stored"
    assert retries() == 2 and len(delays) == 2
    assert 0 <= delays[0] <= 0.1 and 0 <= delays[1] <= 0.15

    hopeless = FlakyStorageCallDouble(failures=99)
    with pytest.raises(StorageUnavailable):
        call(hopeless)
    assert hopeless.calls == 4 and retries() == 5
    assert all(delay <= 0.15 for delay in delays)

    def refused() -> str:
        raise InvalidRequest("not transient")

    with pytest.raises(InvalidRequest):
        policy.call(refused, transient=lambda error: isinstance(error, StorageUnavailable))
    assert retries() == 5


@pytest.mark.parametrize("stage_spans", [True, False])
def test_stage_spans_only_when_traces_are_exported(stage_spans: bool) -> None:
    """Without a trace exporter the server keeps the request span only (its ids still reach the
    reply and the logs); the stage durations are recorded either way."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(MeterProvider(metric_readers=[reader]), tracer_provider, stage_spans)
    with telemetry.request({"id": "r1", "type": "t"}) as root:
        with (
            telemetry.stage("store", {"store": "s3"}) as stage,
            telemetry.storage_call("s3", "put_if_absent") as call,
        ):
            telemetry.retried("s3", 1)
        assert (stage is root and call is root) is not stage_spans

    names = sorted(span.name for span in spans.get_finished_spans())
    expected = ["build_context.storage.put_if_absent", "build_context.store"] if stage_spans else []
    assert names == sorted([*expected, "process t"])
    retried_on = [s.name for s in spans.get_finished_spans() if s.events]
    assert retried_on == ["build_context.storage.put_if_absent" if stage_spans else "process t"]
    assert [p.count for p in data_points(reader, "build_context.stage.duration")] == [1]
