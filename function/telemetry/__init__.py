"""Telemetry in four parts: instruments.py (metrics and spans of the use-cases), exporters.py
(Prometheus and OTLP providers of a serving process), logs.py (JSON log lines) and redaction.py
(what may be quoted in a log line or a message). The names used elsewhere are re-exported here."""

from .exporters import Exporters, install_exporters
from .instruments import (
    BYTES_BUCKETS,
    CLEANUP_BUCKETS,
    NOOP,
    SECONDS_BUCKETS,
    Telemetry,
)
from .logs import JsonFormatter, configure_logging
from .redaction import describe_cause, redact

__all__ = [
    "BYTES_BUCKETS",
    "CLEANUP_BUCKETS",
    "NOOP",
    "SECONDS_BUCKETS",
    "Exporters",
    "JsonFormatter",
    "Telemetry",
    "configure_logging",
    "describe_cause",
    "install_exporters",
    "redact",
]
