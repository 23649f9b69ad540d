"""The SDK providers of a process: Prometheus always (served on `/metrics` by the HTTP server),
OTLP when the standard `OTEL_EXPORTER_OTLP_*` variables ask for it. See docs/observability.md."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace

from ..errors import ConfigurationError
from .instruments import SCOPE

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import ExemplarFilter
    from prometheus_client import CollectorRegistry


@dataclass
class Exporters:
    """The SDK providers of this process and the Prometheus registry behind `/metrics`."""

    meter_provider: metrics.MeterProvider
    tracer_provider: trace.TracerProvider
    metrics_app: Callable[..., Iterable[bytes]]
    otlp: tuple[str, ...]
    registry: CollectorRegistry

    def shutdown(self) -> None:
        """Flush what OTLP still holds (spans, the last metric export) before exit."""
        for provider in (self.tracer_provider, self.meter_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


_EXPORTERS: Exporters | None = None
_LOCK = threading.Lock()


def install_exporters(environ: Mapping[str, str] = os.environ) -> Exporters:
    """Install the global meter and tracer providers, once per process (later calls reuse)."""
    global _EXPORTERS
    with _LOCK:
        if _EXPORTERS is None:
            _EXPORTERS = _build_exporters(environ)
            metrics.set_meter_provider(_EXPORTERS.meter_provider)
            trace.set_tracer_provider(_EXPORTERS.tracer_provider)
        return _EXPORTERS


def _otlp_wanted(environ: Mapping[str, str], signal: str) -> bool:
    if environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    for variable in ("OTEL_EXPORTER_OTLP_PROTOCOL", f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"):
        protocol = environ.get(variable, "http/protobuf")
        if protocol != "http/protobuf":
            raise ConfigurationError(
                variable,
                f"{protocol!r} is not supported; this build exports OTLP over http/protobuf",
                "Set it to http/protobuf and point the endpoint at the collector's HTTP port "
                "(usually 4318).",
            )
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def _build_exporters(environ: Mapping[str, str]) -> Exporters:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_client import (
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
        make_wsgi_app,
    )

    explicit = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: SCOPE}
    if "service.instance.id" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        # Each server process exports its own cumulative series (BUILD_CONTEXT_PROCESSES):
        # a collector must be able to tell them apart.
        explicit[SERVICE_INSTANCE_ID] = f"{socket.gethostname()}-{os.getpid()}"
    resource = Resource.create(explicit)
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp: list[str] = []
    if _otlp_wanted(environ, "METRICS"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        otlp.append("metrics")
    tracer_provider = TracerProvider(resource=resource)
    if _otlp_wanted(environ, "TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        otlp.append("traces")
    return Exporters(
        MeterProvider(
            metric_readers=readers,
            resource=resource,
            exemplar_filter=_exemplar_filter(environ, otlp),
        ),
        tracer_provider,
        make_wsgi_app(registry),
        tuple(otlp),
        registry,
    )


def _exemplar_filter(environ: Mapping[str, str], otlp: list[str]) -> ExemplarFilter | None:
    """None (the SDK's default, or `OTEL_METRICS_EXEMPLAR_FILTER`) when OTLP exports metrics;
    otherwise off: the Prometheus exporter drops exemplars, and offering each measurement to
    the reservoirs made a histogram record 2.6x dearer (19 against 7 µs, docs/performance.md)."""
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter

    if "metrics" in otlp or environ.get("OTEL_METRICS_EXEMPLAR_FILTER"):
        return None
    return AlwaysOffExemplarFilter()
