"""Typed failures of one storage call, raised at the SDK boundary; callers branch on the type.

Each SDK is mapped onto these in exactly one place (`s3/errors.py` for botocore,
`configmap/errors.py` for the Kubernetes client). Every class is also a `BuildContextError`
with the `reason` a request sees when nobody catches it, and its message already names the
call, the object and the fix.
"""

from __future__ import annotations

from ..errors import (
    BuildContextError,
    ContextTooLarge,
    InternalError,
    StorageConflict,
    StorageForbidden,
    StorageUnavailable,
)


class StoreError(BuildContextError):
    """A storage call failed. `code` is what the server said (an S3 code, an HTTP status)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NotFound(StoreError):
    """The object (or the upload) is not there; a misconfiguration when nobody expected it."""

    reason = "StorageUnavailable"


class PreconditionFailed(StoreError):
    """A conditional call lost: the object exists (If-None-Match) or changed (If-Match)."""

    reason = "StorageUnavailable"


class Conflict(StorageConflict, StoreError):
    """The server refused because of the object's current state (Kubernetes 409)."""


class Unsupported(StoreError):
    """The server does not implement what we asked (S3 NotImplemented on a condition)."""

    reason = "StorageUnavailable"


class Forbidden(StorageForbidden, StoreError):
    """Denied: credentials, permissions, or a namespace that does not exist."""


class Unavailable(StorageUnavailable, StoreError):
    """The server did not answer, or answered that it cannot serve now; retryable unless the
    fix is a setting (`retryable` False)."""

    def __init__(self, message: str, code: str = "", retryable: bool = True) -> None:
        super().__init__(message, code)
        self.retryable = retryable


class TooLarge(ContextTooLarge, StoreError):
    """The server refused the archive as too large."""


class Rejected(InternalError, StoreError):
    """The server refused the call for a reason we have no better name for."""
