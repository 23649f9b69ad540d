"""parliament entry: the function instance that routes a CloudEvent to its use-case.

`Function(app)` is what parliament serves: `parliament.server.create` calls its `main(context)`
for every POST, as it would a `func.py` module's. The server builds one per App (server.py);
so can a test, or anything else that serves the app, without module state. The pieces around
it each live in one place: the HTTP error replies in http_errors.py, the PingSource data in
ping.py, the logs and metrics of each outcome in outcomes.py, the sender's identity in auth.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.http import CloudEvent, from_http
from parliament import Context
from pydantic import BaseModel

from . import boundary, contract, http_errors, outcomes, ping
from .app import App
from .auth import Refused, Sender
from .errors import BuildContextError, FieldError, InternalError, InvalidRequest
from .http_errors import HttpError
from .wsgi import SENDER

Reply = Any
"""A CloudEvent (parliament sends it in binary mode), or Flask's (body, status, headers)."""


@dataclass(frozen=True)
class Route:
    """The use-case an event type goes to, and the handler whose senders may call it
    (BUILD_CONTEXT_HANDLERS, BUILD_CONTEXT_AUTH_<HANDLER>_SUBJECTS)."""

    handler: str
    run: Callable[[CloudEvent, boundary.EventIdentity], Reply]


class Function:
    """One App served: parliament calls `main` for each POST; `handle` routes an event."""

    def __init__(self, app: App) -> None:
        self.app = app
        every = {
            contract.REQUESTED: Route("create", self._create),
            contract.PING: Route("cleanup", self._cleanup),
        }
        self.routes = {kind: r for kind, r in every.items() if app.settings.handles(r.handler)}
        """The event types this instance answers (BUILD_CONTEXT_HANDLERS)."""

    def main(self, context: Context) -> Reply:
        """parliament's entry: the decoded event, the sender the edge verified (function/edge.py
        leaves it in the WSGI environ), the reply."""
        request = context.request
        event = context.cloud_event
        if event is None:
            try:
                event = _event(request)
            except HttpError as error:
                return error.reply()
        return self.handle(event, request.headers, request.environ.get(SENDER))

    def handle(
        self,
        event: CloudEvent | None,
        headers: Mapping[str, str] | None = None,
        sender: Sender | None = None,
    ) -> Reply:
        if event is None:
            return http_errors.not_a_cloudevent().reply()
        try:
            route = self._route(event, sender)
        except HttpError as error:
            return error.reply()
        identity = boundary.event_identity(event.get_attributes())
        trace = boundary.trace_context(headers)
        with self.app.telemetry.request(_span_attributes(event, identity), trace):
            try:
                return route.run(event, identity)
            except HttpError as error:
                return error.reply()

    def _route(self, event: CloudEvent, sender: Sender | None) -> Route:
        """The event's route, if this instance handles its type and its sender may call it."""
        route = self.routes.get(event["type"])
        if route is None:
            raise http_errors.unhandled_type(event["type"], self.routes)
        if self.app.senders is not None:
            try:
                self.app.senders.check(route.handler, sender)
            except Refused as refused:
                outcomes.refused(self.app.telemetry, refused, route.handler)
                raise http_errors.refused(refused) from None
        return route

    def _cleanup(self, event: CloudEvent, identity: boundary.EventIdentity) -> Reply:
        if identity.problem:
            raise HttpError(400, identity.problem)
        request = ping.cleanup_request(event.data, self.app.settings.cleanup_min_ttl_seconds)
        completed = self.app.cleanup.run(request, request_id=identity.id)
        return self._reply(contract.CLEANUP_COMPLETED, completed, None)

    def _create(self, event: CloudEvent, identity: boundary.EventIdentity) -> Reply:
        store = self.app.create.store.backend
        attempt = outcomes.Attempt({"store": store, "runtime": outcomes.runtime_hint(event.data)})
        try:
            if identity.problem:
                raise InvalidRequest(
                    identity.problem, [FieldError(identity.problem, field=identity.field)]
                )
            created = self.app.create.run(event.data, identity.id, identity.source)
        except BuildContextError as error:
            return self._failed(event, identity, attempt, error)
        except Exception as error:
            internal = InternalError(
                f"internal error ({type(error).__name__}); the request id {identity.id} finds "
                "it in the logs"
            )
            return self._failed(event, identity, attempt, internal, unexpected=error)
        outcomes.created(self.app.telemetry, attempt, identity.id, created)
        return self._reply(contract.CREATED, created, created.lambda_function)

    def _failed(
        self,
        event: CloudEvent,
        identity: boundary.EventIdentity,
        attempt: outcomes.Attempt,
        error: BuildContextError,
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
        outcomes.failed(self.app.telemetry, attempt, failed, error, unexpected)
        return self._reply(contract.FAILED, failed, failed.lambda_function)

    def _reply(self, kind: str, data: BaseModel, subject: str | None) -> CloudEvent:
        attributes = {
            "type": kind,
            "source": self.app.settings.event_source,
            "id": str(uuid.uuid4()),
            "datacontenttype": "application/json",
        }
        if subject and boundary.is_dns_label(subject):
            attributes["subject"] = subject
        self.app.telemetry.inject(attributes)
        return CloudEvent(
            attributes, data.model_dump(mode="json", by_alias=True, exclude_none=True)
        )


def _event(request: Any) -> CloudEvent | None:
    """An event parliament could not decode: a binary-mode event whose data the SDK could not
    decode (a number over 4300 digits, deep nesting) has headers that are a CloudEvent, so the
    data is the problem: keep it raw and let validation say so. A structured-mode body that does
    not decode is refused; anything else is no CloudEvent (None)."""
    try:
        return from_http(request.headers, request.get_data(), data_unmarshaller=lambda raw: raw)
    except Exception:
        pass
    if str(request.headers.get("Content-Type", "")).startswith("application/cloudevents+json"):
        raise http_errors.undecodable_structured_event()
    return None


def _span_attributes(event: CloudEvent, identity: boundary.EventIdentity) -> dict[str, str]:
    """The request span's attributes: only checked values (the identity, the trace context)."""
    given = event.get_attributes()
    attributes = {key: given[key] for key in ("type", "specversion") if key in given}
    attributes |= {"id": identity.id, "source": identity.source}
    return attributes | boundary.trace_context(given)
