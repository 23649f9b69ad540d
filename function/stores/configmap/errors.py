"""The Kubernetes client's exceptions as our typed failures, with messages that name the fix:
the one place where apiserver statuses are read."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from kubernetes.client.rest import ApiException

from ...retry import RetryPolicy
from ..failures import Conflict, Forbidden, NotFound, Rejected, StoreError, Unavailable
from .codec import REQUIRED_VERBS


@dataclass(frozen=True)
class Call:
    """Where a call went: what its failure message names."""

    verb: str
    namespace: str
    name: str
    host: str
    policy: RetryPolicy

    @property
    def what(self) -> str:
        if self.name:
            return f"ConfigMap {self.namespace}/{self.name}"
        return f"configmaps in {self.namespace!r}"


def message(error: ApiException) -> str:
    """The `message` of the apiserver's Status body, else the HTTP reason."""
    try:
        status = json.loads(error.body or "")
        return str(status.get("message") or error.reason)
    except (ValueError, AttributeError, TypeError):
        return str(error.reason or error.body or "")


class KubeBoundary:
    """Which client failures are worth another attempt, and how they read in a log."""

    def transient(self, error: BaseException) -> bool:
        if isinstance(error, ApiException):
            status = int(error.status or 0)
            return status == 0 or status == 429 or status >= 500
        return isinstance(error, urllib3.exceptions.HTTPError | OSError)

    def describe(self, error: BaseException) -> str:
        if isinstance(error, ApiException):
            return f"{error.status} {message(error)}"
        return f"{type(error).__name__}: {error}"


BOUNDARY = KubeBoundary()


def _unauthorized(call: Call, said: str) -> StoreError:
    return Forbidden(
        f"the apiserver did not accept our credentials to {call.verb} {call.what} ({said}): "
        "check the pod's ServiceAccount token, or the user in KUBECONFIG",
        "401",
    )


def _forbidden(call: Call, said: str) -> StoreError:
    return Forbidden(
        f"the apiserver refused to {call.verb} {call.what} (403: {said}): bind the "
        f"ServiceAccount to the Role in knative/base/rbac.yaml in namespace {call.namespace!r} "
        f"(verbs on configmaps, requests: {', '.join(REQUIRED_VERBS['create'])}; cleanup: "
        f"{', '.join(REQUIRED_VERBS['cleanup'])})",
        "403",
    )


def _not_found(call: Call, said: str) -> StoreError:
    if call.verb in ("create", "list"):  # the namespace itself is missing
        return Forbidden(
            f"cannot {call.verb} {call.what}: {said}; create the namespace or remove it from "
            "BUILD_CONTEXT_NAMESPACE / BUILD_CONTEXT_ALLOWED_NAMESPACES",
            "404",
        )
    return NotFound(f"cannot {call.verb} {call.what}: it does not exist ({said})", "404")


def _conflict(call: Call, said: str) -> StoreError:
    return Conflict(f"cannot {call.verb} {call.what}: {said}", "409")


def _expired(call: Call, said: str) -> StoreError:
    return Unavailable(f"listing {call.what} took too long ({said}); run again", "410")


BY_STATUS: dict[int, Callable[[Call, str], StoreError]] = {
    401: _unauthorized,
    403: _forbidden,
    404: _not_found,
    409: _conflict,
    410: _expired,
}
"""The statuses that are not transient and mean something of their own; any other is Rejected."""


def translate(error: BaseException, attempts: int, call: Call) -> StoreError | None:
    """The typed failure of `call` (None for an exception that is not the client's)."""
    if not isinstance(error, ApiException | urllib3.exceptions.HTTPError | OSError):
        return None
    if BOUNDARY.transient(error):
        policy = call.policy
        return Unavailable(
            f"the Kubernetes API server at {call.host} did not {call.verb} configmaps in "
            f"namespace {call.namespace!r} within {policy.attempts} attempts / "
            f"{policy.deadline:g} s ({BOUNDARY.describe(error)[:300]}); retry later",
            str(getattr(error, "status", "") or type(error).__name__),
        )
    assert isinstance(error, ApiException)
    status, said = int(error.status or 0), message(error)
    if status in BY_STATUS:
        return BY_STATUS[status](call, said)
    return Rejected(
        f"the apiserver rejected {call.verb} of {call.what} ({status}): {said}", str(status)
    )
