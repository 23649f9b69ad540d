"""parliament entry: route a CloudEvent to a use-case and turn the result into a reply event."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent, from_http
from parliament import Context
from pydantic import BaseModel, ValidationError

from . import boundary, contract
from .app import App
from .auth import Refused, Sender
from .errors import BuildContextError, FieldError, InternalError, InvalidRequest
from .runtimes import lookup
from .telemetry import describe_cause, redact

log = logging.getLogger("build_context")
_APP: App | None = None
SENDER = "build_context.sender"
"""WSGI environ key of the verified `Sender` (set by `authenticate`)."""
_STATUS_LINES = {401: "401 Unauthorized", 403: "403 Forbidden", 503: "503 Service Unavailable"}


def install(app: App) -> None:
    global _APP
    _APP = app


def current_app() -> App:
    global _APP
    if _APP is None:
        _APP = App.from_settings()
    return _APP


def main(context: Context) -> Any:
    event = context.cloud_event
    if event is None:
        event = _undecoded_data_event(context.request)
    if event is None and _structured(context.request.headers):
        return _http_error(
            400,
            "the structured-mode body is not a CloudEvent in JSON (it does not decode: numbers "
            "over 4300 digits or deep nesting?); send an application/cloudevents+json object "
            "with specversion, type, source, id and data",
        )
    sender = context.request.environ.get(SENDER)
    return handle(current_app(), event, context.request.headers, sender)


def _structured(headers: Mapping[str, str]) -> bool:
    return str(headers.get("Content-Type", "")).startswith("application/cloudevents+json")


def _undecoded_data_event(request: Any) -> CloudEvent | None:
    """A binary-mode event whose data the SDK could not decode (a number over 4300 digits, deep
    nesting): the headers are a CloudEvent, so the data is the problem; keep it raw and let
    validation say so. Anything else is no CloudEvent."""
    try:
        return from_http(request.headers, request.get_data(), data_unmarshaller=lambda raw: raw)
    except Exception:
        return None


def authenticate(app: App, environ: dict[str, Any]) -> tuple[str, str, dict[str, str]] | None:
    """The WSGI form of `admit`, for a server that did not check the sender at its edge
    (function/edge.py does, and leaves the sender in the environ)."""
    if SENDER in environ:
        return None
    try:
        sender = admit(app, environ.get("PATH_INFO", ""), environ.get("HTTP_AUTHORIZATION"))
    except Refused as refused:
        return (_STATUS_LINES[refused.status], *refusal(app, refused))
    if sender is not None:
        environ[SENDER] = sender
    return None


def admit(app: App, path: str, authorization: str | None, *, wait: bool = True) -> Sender | None:
    """With BUILD_CONTEXT_AUTH=oidc, the sender of a request, from its headers alone: a valid
    token whose subject some handler of this instance allows for the token's audience (the
    handler itself is checked in `handle`, once the event type is known). None on the paths open
    to anyone, and with auth off. Raises Refused; with `wait` False, KeysPending rather than
    waiting for the issuer's keys."""
    if app.verifier is None or app.policies is None or is_open(path):
        return None
    sender = app.verifier.verify(authorization, wait=wait)
    meant = [
        policy
        for handler, policy in app.policies.items()
        if app.settings.handles(handler) and policy.audience in sender.audiences
    ]
    if not any(sender.subject in policy.subjects for policy in meant):
        for policy in meant:
            policy.check(sender)  # raises: forbidden_subject
    return sender


def is_open(path: str) -> bool:
    """The probes and the scrape need no sender (and carry no body)."""
    return path.startswith("/health/") or path == "/metrics"


def refusal(app: App, refused: Refused) -> tuple[str, dict[str, str]]:
    """JSON body and headers of a refused sender; logs and counts it."""
    body, _, headers = _refused(app, refused, None)
    return body, headers


def _refused(app: App, refused: Refused, handler: str | None) -> tuple[str, int, dict[str, str]]:
    """The JSON refusal, with its metric and its one log line (never the token)."""
    app.telemetry.auth_refused.add(1, {"reason": refused.reason, "status": str(refused.status)})
    log.log(
        logging.ERROR if refused.status >= 500 else logging.WARNING,
        "sender refused",
        extra={
            "status": refused.status,
            "reason": refused.reason,
            "subject": redact(refused.subject, 200) if refused.subject else None,
            "handler": handler,
        },
    )
    body, status, headers = _http_error(refused.status, refused.message, refused.reason)
    if status == 401:  # RFC 6750: no error code when no token was sent
        error = "" if refused.reason == "missing_token" else ', error="invalid_token"'
        headers["WWW-Authenticate"] = f'Bearer realm="build-context"{error}'
    return body, status, headers


def handle(
    app: App,
    event: CloudEvent | None,
    headers: Mapping[str, str] | None = None,
    sender: Sender | None = None,
) -> Any:
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
            f"event type {boundary.quote(kind)} is not handled here; send one of "
            f"{', '.join(sorted(accepted))}",
        )
    if app.policies is not None:
        handler = "cleanup" if kind == contract.PING else "create"
        try:
            if sender is None:
                raise Refused(401, "missing_token", "no verified sender for this request")
            app.policies[handler].check(sender)
        except Refused as refused:
            return _refused(app, refused, handler)
    identity = boundary.event_identity(event.get_attributes())
    attributes = {
        key: value
        for key, value in event.get_attributes().items()
        if key in ("type", "specversion")
    }
    attributes |= {"id": identity.id, "source": identity.source}
    attributes |= boundary.trace_context(event.get_attributes())
    with app.telemetry.request(attributes, boundary.trace_context(headers)):
        if kind == contract.PING:
            if identity.problem:
                return _http_error(400, identity.problem)
            return _cleanup(app, event, identity)
        return _create(app, event, identity)


def _accepted(app: App) -> set[str]:
    handlers = app.settings.handlers
    accepted = {contract.REQUESTED} if handlers in ("all", "create") else set()
    return accepted | ({contract.PING} if handlers in ("all", "cleanup") else set())


def _cleanup(app: App, event: CloudEvent, identity: boundary.EventIdentity) -> Any:
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data) if data.strip() else None
        except (ValueError, RecursionError, MemoryError):
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
    floor = app.settings.cleanup_min_ttl_seconds
    if request.ttl_seconds is not None and request.ttl_seconds < floor:
        return _http_error(
            400,
            f"data.ttlSeconds: {request.ttl_seconds} is below the floor of {floor} s "
            "(BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS): ask for at least that, or lower the "
            f"setting (TTL policy belongs to configuration); {_PING_DATA}",
        )
    completed = app.cleanup.run(request, request_id=identity.id)
    return _reply(app, contract.CLEANUP_COMPLETED, completed, None)


_PING_DATA = (
    "the PingSource data must be empty or a JSON object with only dryRun (boolean) and "
    "ttlSeconds (integer, at least BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS), "
    'e.g. {"dryRun": true, "ttlSeconds": 86400}'
)


def _create(app: App, event: CloudEvent, identity: boundary.EventIdentity) -> CloudEvent:
    request_id = identity.id
    start = time.perf_counter()
    attributes = {"store": app.create.store.backend, "runtime": _runtime_hint(event.data)}
    try:
        if identity.problem:
            raise InvalidRequest(
                identity.problem, [FieldError(identity.problem, field=identity.field)]
            )
        created = app.create.run(event.data, request_id, identity.source)
    except BuildContextError as error:
        return _failed(app, event, identity, error, attributes, start)
    except Exception as error:
        internal = InternalError(
            f"internal error ({type(error).__name__}); the request id {request_id} finds it in the logs"
        )
        return _failed(app, event, identity, internal, attributes, start, unexpected=error)
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
    identity: boundary.EventIdentity,
    error: BuildContextError,
    attributes: dict[str, str],
    start: float,
    unexpected: Exception | None = None,
) -> CloudEvent:
    data = event.data if isinstance(event.data, dict) else {}
    name = data.get("lambdaFunction", data.get("lambda_function"))
    failed = contract.BuildContextFailed(
        # Only a valid name is echoed (body and `subject` header); a bad one is in `message`.
        lambda_function=name if boundary.is_dns_label(name) else None,
        reason=error.reason,
        message=error.message,
        retryable=error.retryable,
        errors=[contract.ErrorDetail(**e.as_dict()) for e in error.errors],
        errors_omitted=error.omitted or None,
        request_id=identity.id,
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
            "requestId": identity.id,
            "function": failed.lambda_function,
            **attributes,
            "outcome": "failed",
            "reason": error.reason,
            "retryable": error.retryable,
            "cause": _cause(error, unexpected),
            "errors": [
                {k: v for k, v in e.as_dict().items() if k != "message"} for e in error.errors
            ],
            "errorsOmitted": error.omitted,
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
    if subject and boundary.is_dns_label(subject):
        attributes["subject"] = subject
    app.telemetry.inject(attributes)
    return CloudEvent(attributes, data.model_dump(mode="json", by_alias=True, exclude_none=True))


def _http_error(
    status: int, message: str, reason: str | None = None
) -> tuple[str, int, dict[str, str]]:
    body = json.dumps(
        {"error": message, "status": status, **({"reason": reason} if reason else {})}
    )
    return body, status, {"Content-Type": "application/json"}
