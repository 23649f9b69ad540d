"""Metrics and spans as tests read them: over HTTP from `/metrics` (`scrape`), or in process
from the SDK's in-memory readers (what an exporter would have received)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from function.telemetry import Telemetry
from tests.support.server import FunctionServer


def metrics_of(reader: InMemoryMetricReader) -> Iterator[Metric]:
    """Every metric the reader holds now (one collection)."""
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def data_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """The data points of one instrument (numbers, or histograms with `count` and `sum`)."""
    return [point for m in metrics_of(reader) if m.name == name for point in m.data.data_points]


def total(reader: InMemoryMetricReader, name: str, **attributes: str) -> int:
    """The sum of a counter's points whose attributes include `attributes`."""
    return sum(
        int(point.value)
        for point in data_points(reader, name)
        if isinstance(point, NumberDataPoint)
        and all((point.attributes or {}).get(k) == v for k, v in attributes.items())
    )


class TelemetryRecorder:
    """Telemetry whose metrics and spans stay in memory for the test to read."""

    def __init__(self) -> None:
        self.metrics = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.telemetry = Telemetry(MeterProvider(metric_readers=[self.metrics]), tracer_provider)

    def retries(self, **attributes: str) -> int:
        return total(self.metrics, "build_context.storage.retries", **attributes)

    def span_names(self) -> list[str]:
        return [span.name for span in self.spans.get_finished_spans()]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def per_label(self, label: str) -> dict[str, dict[str, float]]:
        """Sample name -> value of `label` ("" where absent) -> summed value."""
        found: dict[str, dict[str, float]] = {}
        for s in self.samples:
            by_label = found.setdefault(s.name, {})
            key = s.labels.get(label, "")
            by_label[key] = by_label.get(key, 0.0) + s.value
        return found

    def families(self) -> dict[str, str]:
        """Our metric families as exposed (`# TYPE name type`): name -> type."""
        found = re.findall(r"^# TYPE (build_context_\w+) (\w+)$", self.text, re.MULTILINE)
        return dict(found)


def scrape(server: FunctionServer, prefix: str = "build_context_") -> Scrape:
    """One scrape of `/metrics` on a new connection: the samples whose name starts with `prefix`."""
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers
    samples = [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name.startswith(prefix)
    ]
    return Scrape(response.text, samples)


class OtlpReceiver:
    """A real OTLP/HTTP endpoint on loopback that keeps what the exporters send."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies.get("/v1/traces", []):
            export = ExportTraceServiceRequest.FromString(body)
            found += [s for r in export.resource_spans for ss in r.scope_spans for s in ss.spans]
        return found

    def metric_names(self) -> set[str]:
        names = set()
        for body in self.bodies.get("/v1/metrics", []):
            export = ExportMetricsServiceRequest.FromString(body)
            names |= {
                m.name
                for r in export.resource_metrics
                for sm in r.scope_metrics
                for m in sm.metrics
            }
        return names

    def exemplar_trace_ids(self, name: str) -> set[str]:
        """Trace ids of the exemplars on the data points of histogram `name`."""
        return {
            e.trace_id.hex()
            for body in self.bodies.get("/v1/metrics", [])
            for r in ExportMetricsServiceRequest.FromString(body).resource_metrics
            for sm in r.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.histogram.data_points
            for e in p.exemplars
        }

    def metric_sources(self) -> set[str]:
        """`service.instance.id` of every resource that exported metrics."""
        return {
            a.value.string_value
            for body in self.bodies.get("/v1/metrics", [])
            for r in ExportMetricsServiceRequest.FromString(body).resource_metrics
            for a in r.resource.attributes
            if a.key == "service.instance.id"
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
