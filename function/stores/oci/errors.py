"""The registry client's failures as our typed failures, with messages that name the fix: the one
place where registry answers are read (client.py only sorts them by HTTP status)."""

from __future__ import annotations

from dataclasses import dataclass

from ..failures import Forbidden, NotFound, Rejected, StoreError, TooLarge, Unavailable
from .client import Denied, Missing, Refused, RegistryError
from .client import Unavailable as Down


class RegistryBoundary:
    """Which registry failures are worth another attempt, and how one reads in a log."""

    def transient(self, error: BaseException) -> bool:
        return isinstance(error, Down)

    def describe(self, error: BaseException) -> str:
        return error.message if isinstance(error, RegistryError) else type(error).__name__


@dataclass(frozen=True)
class Call:
    """Where a call went: what its failure message names."""

    what: str
    registry: str
    repository: str

    def translate(self, error: BaseException, attempts: int) -> StoreError | None:
        if not isinstance(error, RegistryError):
            return None
        where = f"{self.registry}/{self.repository}"
        code = str(error.status or "")
        if isinstance(error, Down):
            return Unavailable(
                f"OCI store: {self.what} at {where} failed after {attempts} attempt(s): "
                f"{error.message}; the request can be retried",
                code,
            )
        if isinstance(error, Denied):
            return Forbidden(
                f"OCI store: {self.registry} refused to {self.what} in {self.repository}: "
                f"{error.message}. Give the credentials in BUILD_CONTEXT_OCI_DOCKER_CONFIG pull, "
                "push and delete rights on it (docs/oci.md)",
                code,
            )
        if isinstance(error, Missing):
            return NotFound(f"OCI store: {self.what}: nothing at {where}", code)
        if isinstance(error, Refused) and error.status == 413:
            return TooLarge(
                f"OCI store: {self.registry} refused the context as too large ({error.message}); "
                "raise the registry's limit or make the source smaller",
                code,
            )
        return Rejected(f"OCI store: {self.registry} rejected {self.what} in {where}: "
                        f"{error.message}", code)  # fmt: skip
