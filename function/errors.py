"""Typed failures. Each class is one `reason` of a `buildcontext.failed` event."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .credentials import redact

FailureReason = Literal[
    "InvalidRequest",
    "UnsupportedRuntime",
    "InvalidSource",
    "ContextTooLarge",
    "QuotaExceeded",
    "StorageUnavailable",
    "StorageForbidden",
    "InternalError",
]
"""The `reason` of a `buildcontext.failed` event; each is one class below."""


MAX_ERRORS = 20
"""Errors a failure lists; the rest are only counted, so that a request full of mistakes (or
of findings) gets a short reply and a short log line."""
MESSAGE_MAX = 600
"""Characters of a failure's message and of each error's; a longer one is cut."""


@dataclass(frozen=True)
class FieldError:
    """One precise complaint about the request, pointing at a field or a place in a file."""

    message: str
    field: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def bounded(self) -> FieldError:
        """Credentials redacted and the text cut to `MESSAGE_MAX`."""
        return dataclasses.replace(
            self,
            message=bounded(self.message),
            field=bounded(self.field) if self.field else self.field,
            file=bounded(self.file) if self.file else self.file,
        )


def bounded(text: str) -> str:
    """Credentials redacted (a caller may have put request text in without `quote`), then cut
    to `MESSAGE_MAX` characters."""
    text = redact(text)
    return text if len(text) <= MESSAGE_MAX else f"{text[: MESSAGE_MAX - 1]}…"


class BuildContextError(Exception):
    """A failure the caller is told about: its message and at most `MAX_ERRORS` errors (the
    rest counted in `omitted`), all redacted and bounded here, once for every reply and log
    line built from it."""

    reason: ClassVar[FailureReason] = "InternalError"
    retryable = False

    def __init__(
        self, message: str, errors: list[FieldError] | None = None, omitted: int = 0
    ) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message
        errors = errors or []
        self.errors: list[FieldError] = [e.bounded() for e in errors[:MAX_ERRORS]]
        self.omitted = omitted + max(0, len(errors) - MAX_ERRORS)
        """Errors found but not listed."""


class InvalidRequest(BuildContextError):
    reason = "InvalidRequest"


class UnsupportedRuntime(BuildContextError):
    reason = "UnsupportedRuntime"


class InvalidSource(BuildContextError):
    reason = "InvalidSource"


class ContextTooLarge(BuildContextError):
    reason = "ContextTooLarge"


class QuotaExceeded(BuildContextError):
    """The function already holds as many live contexts (or bytes) as one caller may."""

    reason = "QuotaExceeded"
    limit = "contexts"
    """Which cap: `contexts` or `bytes`."""


class StorageUnavailable(BuildContextError):
    reason = "StorageUnavailable"
    retryable = True


class CapacityExceeded(StorageUnavailable):
    """The store is full by our own cap; an overflow store may take the context instead."""


class StorageForbidden(BuildContextError):
    reason = "StorageForbidden"


class InternalError(BuildContextError):
    reason = "InternalError"


class StorageConflict(InternalError):
    """A stored object under our name holds other bytes: never overwritten."""


@dataclass
class ConfigurationError(Exception):
    """A setting that makes the function unable to start; names the variable."""

    variable: str
    problem: str
    fix: str = ""
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.variable}: {self.problem}"
        return f"{text}. {self.fix}" if self.fix else text
