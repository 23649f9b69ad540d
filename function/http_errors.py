"""HTTP error mapping: every reply that is not a CloudEvent, in one JSON shape.

`{"error": <message>, "status": <code>, "reason": <short reason>}` with `Content-Type:
application/json`, for what is refused before a use-case runs: no CloudEvent, an event type not
handled here, PingSource data not understood (function/ping.py), a sender refused
(function/auth.py), and the edge's limits (function/edge.py). A use-case's own failures are
`buildcontext.failed` events instead (function/func.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus

from .auth import Refused
from .boundary import quote


class HttpError(Exception):
    """A reply with an HTTP error status; raised where the request is refused, rendered once
    by whoever answers (parliament's Flask app, waitress's error task, a WSGI layer)."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def rendered(self) -> tuple[str, dict[str, str]]:
        """The JSON body and the headers."""
        body = {"error": self.message, "status": self.status}
        if self.reason:
            body["reason"] = self.reason
        return json.dumps(body), {"Content-Type": "application/json", **self.headers}

    def reply(self) -> tuple[str, int, dict[str, str]]:
        """What a Flask view returns."""
        body, headers = self.rendered()
        return body, self.status, headers


def refused(refusal: Refused) -> HttpError:
    """A sender refused: 401 names the bearer scheme (RFC 6750: no error code when no token was
    sent), 403 and 503 say why in the body."""
    headers = {}
    if refusal.status == 401:
        error = "" if refusal.reason == "missing_token" else ', error="invalid_token"'
        headers["WWW-Authenticate"] = f'Bearer realm="build-context"{error}'
    return HttpError(refusal.status, refusal.message, refusal.reason, headers)


def not_a_cloudevent() -> HttpError:
    return HttpError(
        400,
        "not a CloudEvent: send ce-specversion, ce-type, ce-source and ce-id headers (binary "
        "mode) or an application/cloudevents+json body (structured mode)",
    )


def undecodable_structured_event() -> HttpError:
    return HttpError(
        400,
        "the structured-mode body is not a CloudEvent in JSON (it does not decode: numbers "
        "over 4300 digits or deep nesting?); send an application/cloudevents+json object "
        "with specversion, type, source, id and data",
    )


def unhandled_type(kind: str, handled: Iterable[str]) -> HttpError:
    return HttpError(
        400,
        f"event type {quote(kind)} is not handled here; send one of {', '.join(sorted(handled))}",
    )
