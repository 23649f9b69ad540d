"""Outcome reporting: the one log line and the metrics of each request's outcome.

A create ends `created` or `failed` (counted in `build_context.requests` with its reason, timed
in `build_context.request.duration`, one `buildcontext.created`/`buildcontext.failed` log line);
a sender refused is counted in `build_context.auth.refused` with one `sender refused` line
(docs/observability.md). Log lines carry only validated, bounded values: never a token, never
the source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import contract
from .auth import Refused
from .errors import BuildContextError, InternalError
from .runtimes import DEFAULT, lookup
from .telemetry import Telemetry, describe_cause, redact

log = logging.getLogger("build_context")


def runtime_hint(data: Any) -> str:
    """The runtime a request names, for the metrics' `runtime` label before it is validated:
    a registered runtime's name, else `unknown` (the label's values stay bounded)."""
    runtime = data.get("runtime", DEFAULT.name) if isinstance(data, dict) else None
    found = lookup(runtime) if isinstance(runtime, str) else None
    return found.name if found else "unknown"


@dataclass
class Attempt:
    """One create as its outcome is reported: the metrics' labels (`store`, `runtime`) as known
    before it ran, and when it began."""

    attributes: dict[str, str]
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def created(
    telemetry: Telemetry, attempt: Attempt, request_id: str, reply: contract.BuildContextCreated
) -> None:
    seconds = attempt.seconds()
    attributes = {**attempt.attributes, "runtime": reply.runtime}
    if reply.overflow:
        attributes["store"] = reply.storage.backend
    telemetry.requests.add(1, {**attributes, "outcome": "created", "reason": ""})
    telemetry.duration.record(seconds, {**attributes, "outcome": "created"})
    log.info(
        contract.CREATED,
        extra={
            "requestId": request_id,
            "function": reply.lambda_function,
            **attributes,
            "outcome": "created",
            "contentHash": reply.content_hash,
            "sizeBytes": reply.size_bytes,
            "reused": reply.reused,
            "durationMs": round(seconds * 1000, 1),
        },
    )


def failed(
    telemetry: Telemetry,
    attempt: Attempt,
    reply: contract.BuildContextFailed,
    error: BuildContextError,
    unexpected: Exception | None = None,
) -> None:
    """Storage and internal failures are ours (ERROR, and the span's error status); the
    caller's are a WARNING."""
    seconds, attributes = attempt.seconds(), attempt.attributes
    telemetry.requests.add(1, {**attributes, "outcome": "failed", "reason": error.reason})
    telemetry.duration.record(seconds, {**attributes, "outcome": "failed"})
    server_side = error.retryable or isinstance(error, InternalError)
    telemetry.request_failed(error.reason, server_side)
    log.log(
        logging.ERROR if server_side else logging.WARNING,
        contract.FAILED,
        exc_info=unexpected,
        extra={
            "requestId": reply.request_id,
            "function": reply.lambda_function,
            **attributes,
            "outcome": "failed",
            "reason": error.reason,
            "retryable": error.retryable,
            "cause": _cause(error, unexpected),
            "errors": [
                {k: v for k, v in e.as_dict().items() if k != "message"} for e in error.errors
            ],
            "errorsOmitted": error.omitted,
            "durationMs": round(seconds * 1000, 1),
        },
    )


def refused(telemetry: Telemetry, refusal: Refused, handler: str | None = None) -> None:
    """`handler` is None when the edge refused the sender before the event was read."""
    telemetry.auth_refused.add(1, {"reason": refusal.reason, "status": str(refusal.status)})
    log.log(
        logging.ERROR if refusal.status >= 500 else logging.WARNING,
        "sender refused",
        extra={
            "status": refusal.status,
            "reason": refusal.reason,
            "subject": redact(refusal.subject, 200) if refusal.subject else None,
            "handler": handler,
        },
    )


def _cause(error: BuildContextError, unexpected: Exception | None) -> str:
    """The exception behind the failure, else its message; for invalid source only the places,
    since a syntax error's message may quote the source."""
    if error.reason == "InvalidSource":
        places = [
            ":".join(str(p) for p in (e.file or e.field, e.line, e.column) if p)
            for e in error.errors
        ]
        return redact(f"{len(places)} problem(s) in the source at {', '.join(places)}")
    underlying = unexpected or error.__cause__
    return describe_cause(underlying) if underlying else redact(error.message)
