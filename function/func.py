"""parliament entry: route a CloudEvent to a use-case and turn the result into a reply event."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent
from parliament import Context
from pydantic import BaseModel, ValidationError

from . import contract
from .app import App
from .errors import BuildContextError, InternalError
from .runtimes import lookup
from .telemetry import describe_cause, redact

log = logging.getLogger("build_context")
_APP: App | None = None


def install(app: App) -> None:
    global _APP
    _APP = app


def current_app() -> App:
    global _APP
    if _APP is None:
        _APP = App.from_settings()
    return _APP


def main(context: Context) -> Any:
    return handle(current_app(), context.cloud_event, context.request.headers)


def handle(app: App, event: CloudEvent | None, headers: Mapping[str, str] | None = None) -> Any:
    if event is None:
        return _http_error(
            400,
            "not a CloudEvent: send ce-specversion, ce-type, ce-source and ce-id headers (binary "
            "mode) or an application/cloudevents+json body (structured mode)",
        )
    kind = event["type"]
    accepted = _accepted(app)
    if kind not in accepted:
        return _http_error(
            400,
            f"event type {kind!r} is not handled here; send one of {', '.join(sorted(accepted))}",
        )
    with app.telemetry.request(event.get_attributes(), headers):
        if kind == contract.PING:
            return _cleanup(app, event)
        return _create(app, event)


def _accepted(app: App) -> set[str]:
    handlers = app.settings.handlers
    accepted = {contract.REQUESTED} if handlers in ("all", "create") else set()
    return accepted | ({contract.PING} if handlers in ("all", "cleanup") else set())


def _cleanup(app: App, event: CloudEvent) -> Any:
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data) if data.strip() else None
        except ValueError:
            return _http_error(400, f"data of {contract.PING} is not JSON: {_PING_DATA}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return _http_error(400, f"data of {contract.PING}: {_PING_DATA}")
    try:
        request = contract.CleanupRequest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"data.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return _http_error(400, f"{problems}; {_PING_DATA}")
    completed = app.cleanup.run(request, request_id=event["id"])
    return _reply(app, contract.CLEANUP_COMPLETED, completed, None)


_PING_DATA = (
    "the PingSource data must be empty or a JSON object with only dryRun (boolean) and "
    'ttlSeconds (integer >= 0), e.g. {"dryRun": true, "ttlSeconds": 86400}'
)


def _create(app: App, event: CloudEvent) -> CloudEvent:
    request_id = event["id"]
    start = time.perf_counter()
    attributes = {"store": app.create.store.backend, "runtime": _runtime_hint(event.data)}
    try:
        created = app.create.run(event.data, request_id, event["source"])
    except BuildContextError as error:
        return _failed(app, event, error, attributes, start)
    except Exception as error:
        internal = InternalError(
            f"internal error ({type(error).__name__}); the request id {request_id} finds it in the logs"
        )
        return _failed(app, event, internal, attributes, start, unexpected=error)
    attributes["runtime"] = created.runtime
    if created.overflow:
        attributes["store"] = created.storage.backend
    duration = time.perf_counter() - start
    app.telemetry.requests.add(1, {**attributes, "outcome": "created", "reason": ""})
    app.telemetry.duration.record(duration, {**attributes, "outcome": "created"})
    log.info(
        contract.CREATED,
        extra={
            "requestId": request_id,
            "function": created.lambda_function,
            **attributes,
            "outcome": "created",
            "contentHash": created.content_hash,
            "sizeBytes": created.size_bytes,
            "reused": created.reused,
            "durationMs": round(duration * 1000, 1),
        },
    )
    return _reply(app, contract.CREATED, created, created.lambda_function)


def _failed(
    app: App,
    event: CloudEvent,
    error: BuildContextError,
    attributes: dict[str, str],
    start: float,
    unexpected: Exception | None = None,
) -> CloudEvent:
    data = event.data if isinstance(event.data, dict) else {}
    name = data.get("lambdaFunction", data.get("lambda_function"))
    failed = contract.BuildContextFailed(
        lambda_function=name if isinstance(name, str) else None,
        reason=error.reason,
        message=error.message,
        retryable=error.retryable,
        errors=[contract.ErrorDetail(**e.as_dict()) for e in error.errors],
        request_id=event["id"],
    )
    duration = time.perf_counter() - start
    app.telemetry.requests.add(1, {**attributes, "outcome": "failed", "reason": error.reason})
    app.telemetry.duration.record(duration, {**attributes, "outcome": "failed"})
    server_side = error.retryable or isinstance(error, InternalError)
    app.telemetry.request_failed(error.reason, server_side)
    log.log(
        logging.ERROR if server_side else logging.WARNING,
        contract.FAILED,
        exc_info=unexpected,
        extra={
            "requestId": event["id"],
            "function": redact(failed.lambda_function, 100) if failed.lambda_function else None,
            **attributes,
            "outcome": "failed",
            "reason": error.reason,
            "retryable": error.retryable,
            "cause": _cause(error, unexpected),
            "errors": [
                {k: v for k, v in e.as_dict().items() if k != "message"} for e in error.errors
            ],
            "durationMs": round(duration * 1000, 1),
        },
    )
    return _reply(app, contract.FAILED, failed, failed.lambda_function)


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


def _runtime_hint(data: Any) -> str:
    runtime = data.get("runtime", "python") if isinstance(data, dict) else None
    found = lookup(runtime) if isinstance(runtime, str) else None
    return found.name if found else "unknown"


def _reply(app: App, kind: str, data: BaseModel, subject: str | None) -> CloudEvent:
    attributes = {
        "type": kind,
        "source": app.settings.event_source,
        "id": str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    if subject:
        attributes["subject"] = subject
    app.telemetry.inject(attributes)
    return CloudEvent(attributes, data.model_dump(mode="json", by_alias=True, exclude_none=True))


def _http_error(status: int, message: str) -> tuple[str, int, dict[str, str]]:
    body = json.dumps({"error": message, "status": status})
    return body, status, {"Content-Type": "application/json"}
