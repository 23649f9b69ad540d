"""Typed failures. Each class is one `reason` of a `buildcontext.failed` event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .contract import FailureReason


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


class BuildContextError(Exception):
    reason: ClassVar[FailureReason] = "InternalError"
    retryable = False

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors: list[FieldError] = errors or []


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
