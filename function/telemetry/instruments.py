"""The instruments and spans of a request, a stage and a storage call (OpenTelemetry API only).

`Telemetry` uses only the OpenTelemetry API, so the core runs and is tested without any
exporter (`NOOP`); exporters.py installs the SDK providers of a serving process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context, metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SCOPE = "build-context"
_PROPAGATOR = TraceContextTextMapPropagator()

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
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(SCOPE)
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

    def request(
        self, event: Mapping[str, Any], fallback_headers: Mapping[str, str] | None = None
    ) -> AbstractContextManager[trace.Span]:
        """The span of one CloudEvent, continuing the trace of its `traceparent` extension
        (CloudEvents distributed tracing), else of the HTTP `traceparent` header."""
        carrier = {k: str(event[k]) for k in ("traceparent", "tracestate") if event.get(k)}
        if not carrier and fallback_headers is not None:
            carrier = {
                k: v for k in ("traceparent", "tracestate") if (v := fallback_headers.get(k))
            }
        name = f"process {event.get('type', '')}"
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        if not self.stage_spans:
            # No trace exporter: the span's ids reach the reply and the logs, its attributes
            # nobody (half the cost of the span, bench/telemetry.py).
            return _Current(self.tracer.start_span(name, parent, trace.SpanKind.SERVER))
        attributes = {
            "cloudevents.event_id": str(event.get("id", "")),
            "cloudevents.event_source": str(event.get("source", "")),
            "cloudevents.event_type": str(event.get("type", "")),
            "cloudevents.event_spec_version": str(event.get("specversion", "")),
        }
        return self.tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )

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

    def stage(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[trace.Span]:
        """Time a stage into `build_context.stage.duration` (with `attributes` as they are at
        its end), in a span of its own when `stage_spans`."""
        if not self.stage_spans:
            return _Timed(self.stage_duration, name, attributes)
        return self._stage_span(name, attributes)

    @contextmanager
    def _stage_span(self, name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
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


class _Timed:
    """A stage without a span of its own: a generator-based context manager and the current
    span's lookup cost more than the histogram's record (bench/telemetry.py)."""

    __slots__ = ("attributes", "histogram", "name", "start")

    def __init__(self, histogram: metrics.Histogram, name: str, attributes: dict[str, Any]):
        self.histogram, self.name, self.attributes = histogram, name, attributes

    def __enter__(self) -> trace.Span:
        self.start = time.perf_counter()
        return trace.get_current_span()

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.histogram.record(elapsed, {**self.attributes, "stage": self.name})


class _Current:
    """Make `span` current for the block and end it after (what `start_as_current_span` does,
    without recording the exception: used only for spans nothing exports)."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> trace.Span:
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self.token)
        self.span.end()


NOOP = Telemetry(metrics.NoOpMeterProvider(), trace.NoOpTracerProvider())
