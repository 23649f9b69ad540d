"""OpenTelemetry instruments and spans for the use-cases.

Only the OpenTelemetry API is used here; which providers and exporters are installed is decided
at start-up (see `setup`), so the core stays testable without any exporter.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace

_SCOPE = "build-context"


class Telemetry:
    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(_SCOPE)
        self.requests = meter.create_counter(
            "build_context.requests",
            unit="{request}",
            description="Requests by outcome and reason.",
        )
        self.duration = meter.create_histogram(
            "build_context.request.duration", unit="s", description="End-to-end creation time."
        )
        self.stage_duration = meter.create_histogram(
            "build_context.stage.duration", unit="s", description="Time per stage of a request."
        )
        self.archive_size = meter.create_histogram(
            "build_context.archive.size", unit="By", description="Size of stored archives."
        )
        self.reuses = meter.create_counter(
            "build_context.reuses",
            unit="{context}",
            description="Requests answered by an existing context.",
        )
        self.retries = meter.create_counter(
            "build_context.storage.retries", unit="{retry}", description="Retried storage calls."
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
            "build_context.cleanup.duration", unit="s", description="Duration of a cleanup run."
        )

    @contextmanager
    def stage(self, name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
        start = time.perf_counter()
        with self.tracer.start_as_current_span(f"build_context.{name}") as span:
            try:
                yield span
            finally:
                self.stage_duration.record(
                    time.perf_counter() - start, {**attributes, "stage": name}
                )

    def retried(self, store: str) -> None:
        self.retries.add(1, {"store": store})


NOOP = Telemetry(metrics.NoOpMeterProvider(), trace.NoOpTracerProvider())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed with `extra=` become keys."""

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
