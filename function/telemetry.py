"""OpenTelemetry instruments, spans and exporters; structured JSON logging.

`Telemetry` uses only the OpenTelemetry API, so the core runs and is tested without any
exporter (`NOOP`). `install_exporters` picks the SDK providers once per process: Prometheus
always (served on `/metrics` by the HTTP server), OTLP when the standard `OTEL_EXPORTER_OTLP_*`
variables ask for it. See docs/observability.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_SCOPE = "build-context"
_PROPAGATOR = TraceContextTextMapPropagator()
log = logging.getLogger("build_context")

# Bucket bounds include the story's targets (hash 0.1 s, storage 1 s, creation 5 s), so the
# p95 alerts compare against a bucket edge instead of an interpolation.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CLEANUP_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BYTES_BUCKETS = tuple(float(1024 * 4**i) for i in range(9))  # 1 KiB .. 64 MiB


class Telemetry:
    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        stage_spans: bool = True,
    ) -> None:
        """`stage_spans=False` keeps only the request span (its ids go into the reply's
        `traceparent` and the log lines) and skips the spans of stages and storage calls: the
        server does so when no trace exporter would ever send them (13 % of a small request's
        CPU). Stage durations are recorded either way."""
        self.stage_spans = stage_spans
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(_SCOPE)
        self.requests = meter.create_counter(
            "build_context.requests",
            unit="{request}",
            description="Requests by outcome and reason.",
        )
        self.duration = meter.create_histogram(
            "build_context.request.duration",
            unit="s",
            description="End-to-end creation time.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.stage_duration = meter.create_histogram(
            "build_context.stage.duration",
            unit="s",
            description="Time per stage of a request (validate, render, archive, store).",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.archive_size = meter.create_histogram(
            "build_context.archive.size",
            unit="By",
            description="Size of stored archives.",
            explicit_bucket_boundaries_advisory=BYTES_BUCKETS,
        )
        self.reuses = meter.create_counter(
            "build_context.reuses",
            unit="{context}",
            description="Requests answered by an existing context.",
        )
        self.retries = meter.create_counter(
            "build_context.storage.retries", unit="{retry}", description="Retried storage calls."
        )
        self.auth_refused = meter.create_counter(
            "build_context.auth.refused",
            unit="{request}",
            description="Requests refused for their sender identity (BUILD_CONTEXT_AUTH=oidc), "
            "by reason and HTTP status.",
        )
        self.quota_refused = meter.create_counter(
            "build_context.quota.refused",
            unit="{request}",
            description="New contexts refused by the per-function caps, by limit "
            "(contexts, bytes).",
        )
        self.cleanup_runs = meter.create_counter(
            "build_context.cleanup.runs", unit="{run}", description="Cleanup runs by outcome."
        )
        self.cleanup_contexts = meter.create_counter(
            "build_context.cleanup.contexts",
            unit="{context}",
            description="Contexts seen by cleanup, by action (deleted, retained, failed).",
        )
        self.cleanup_duration = meter.create_histogram(
            "build_context.cleanup.duration",
            unit="s",
            description="Duration of a cleanup run.",
            explicit_bucket_boundaries_advisory=CLEANUP_BUCKETS,
        )
        self.cleanup_last_run = meter.create_gauge(
            "build_context.cleanup.last_run.timestamp",
            unit="s",
            description="Unix time when the last cleanup run (not a dry run) finished; "
            "0: none yet in this process.",
        )

    def declare(self, stores: Iterable[str], cleanup: bool) -> None:
        """Export zero-valued series, so that `increase()` sees the first retry, failed run or
        refused sender of a fresh instance, and the 'cleanup not running' alert sees a cleanup
        instance."""
        self.auth_refused.add(0, {"reason": "invalid_token", "status": "401"})
        for limit in ("contexts", "bytes"):
            self.quota_refused.add(0, {"limit": limit})
        for store in stores:
            self.retries.add(0, {"store": store})
        if cleanup:
            for outcome in ("ok", "errors"):
                self.cleanup_runs.add(0, {"outcome": outcome, "dry_run": "false"})
            self.cleanup_last_run.set(0)

    @contextmanager
    def request(
        self, event: Mapping[str, Any], fallback_headers: Mapping[str, str] | None = None
    ) -> Iterator[trace.Span]:
        """The span of one CloudEvent, continuing the trace of its `traceparent` extension
        (CloudEvents distributed tracing), else of the HTTP `traceparent` header."""
        carrier = {k: str(event[k]) for k in ("traceparent", "tracestate") if event.get(k)}
        if not carrier and fallback_headers is not None:
            carrier = {
                k: v for k in ("traceparent", "tracestate") if (v := fallback_headers.get(k))
            }
        attributes = {
            "cloudevents.event_id": str(event.get("id", "")),
            "cloudevents.event_source": str(event.get("source", "")),
            "cloudevents.event_type": str(event.get("type", "")),
            "cloudevents.event_spec_version": str(event.get("specversion", "")),
        }
        with self.tracer.start_as_current_span(
            f"process {attributes['cloudevents.event_type']}",
            context=_PROPAGATOR.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            yield span

    def request_failed(self, reason: str, server_side: bool) -> None:
        """Mark the current request span: `error.type` always, error status only for failures
        that are ours (storage, internal), as HTTP servers do for 5xx but not 4xx."""
        span = trace.get_current_span()
        span.set_attribute("error.type", reason)
        if server_side:
            span.set_status(trace.Status(trace.StatusCode.ERROR, reason))

    def inject(self, attributes: MutableMapping[str, str]) -> None:
        """Write the current span as `traceparent` (and `tracestate`) into reply attributes."""
        _PROPAGATOR.inject(attributes)

    @contextmanager
    def stage(self, name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
        start = time.perf_counter()
        try:
            with self.span(
                f"build_context.{name}", {"build_context.store": attributes.get("store", "")}
            ) as span:
                yield span
        finally:
            self.stage_duration.record(time.perf_counter() - start, {**attributes, "stage": name})

    def storage_call(self, store: str, operation: str) -> AbstractContextManager[trace.Span]:
        return self.span(
            f"build_context.storage.{operation}",
            {"build_context.store": store, "build_context.operation": operation},
            trace.SpanKind.CLIENT,
        )

    def span(
        self,
        name: str,
        attributes: dict[str, Any],
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    ) -> AbstractContextManager[trace.Span]:
        """A child span made current, or (without `stage_spans`) the current span itself."""
        if not self.stage_spans:
            return nullcontext(trace.get_current_span())
        return self.tracer.start_as_current_span(name, kind=kind, attributes=attributes)

    def retried(self, store: str, attempt: int = 0, error: BaseException | None = None) -> None:
        """Count one retry of a storage call; the current span gets a `retry` event."""
        self.retries.add(1, {"store": store})
        trace.get_current_span().add_event(
            "retry",
            {"attempt": attempt, "error.type": type(error).__name__ if error else ""},
        )


NOOP = Telemetry(metrics.NoOpMeterProvider(), trace.NoOpTracerProvider())

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str, limit: int = 500) -> str:
    """Drop credentials of URLs (`scheme://user:token@host`) and cap the length."""
    text = _USERINFO.sub("***@", text)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_cause(error: BaseException) -> str:
    """`Type: message` of the exception a failure came from, for the log line."""
    return redact(f"{type(error).__name__}: {error}")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Exporters:
    """The SDK providers of this process and the Prometheus registry behind `/metrics`."""

    meter_provider: metrics.MeterProvider
    tracer_provider: trace.TracerProvider
    metrics_app: WSGIApp
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

    explicit = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: _SCOPE}
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
        MeterProvider(metric_readers=readers, resource=resource),
        tracer_provider,
        make_wsgi_app(registry),
        tuple(otlp),
        registry,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed with `extra=` become keys.

    Lines written inside a span carry its `traceId` and `spanId`.
    """

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["traceId"] = format(span.trace_id, "032x")
            entry["spanId"] = format(span.span_id, "016x")
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("waitress").setLevel(max(logging.WARNING, root.level))
