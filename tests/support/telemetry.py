"""What an exporter would have received, read in process: the SDK's in-memory readers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from function.telemetry import Telemetry


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
