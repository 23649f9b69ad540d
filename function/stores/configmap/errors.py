"""The Kubernetes client's exceptions as our typed failures, with messages that name the fix:
the one place where apiserver statuses are read."""

from __future__ import annotations

import json
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
    status, said, verb, what = int(error.status or 0), message(error), call.verb, call.what
    code = str(status)
    if status == 401:
        return Forbidden(
            f"the apiserver did not accept our credentials to {verb} {what} ({said}): "
            "check the pod's ServiceAccount token, or the user in KUBECONFIG",
            code,
        )
    if status == 403:
        return Forbidden(
            f"the apiserver refused to {verb} {what} (403: {said}): bind the ServiceAccount to "
            f"the Role in knative/base/rbac.yaml in namespace {call.namespace!r} (verbs on "
            f"configmaps, requests: {', '.join(REQUIRED_VERBS['create'])}; cleanup: "
            f"{', '.join(REQUIRED_VERBS['cleanup'])})",
            code,
        )
    if status == 404 and verb in ("create", "list"):
        return Forbidden(
            f"cannot {verb} {what}: {said}; create the namespace or remove it from "
            "BUILD_CONTEXT_NAMESPACE / BUILD_CONTEXT_ALLOWED_NAMESPACES",
            code,
        )
    if status == 404:
        return NotFound(f"cannot {verb} {what}: it does not exist ({said})", code)
    if status == 409:
        return Conflict(f"cannot {verb} {what}: {said}", code)
    if status == 410:
        return Unavailable(f"listing {what} took too long ({said}); run again", code)
    return Rejected(f"the apiserver rejected {verb} of {what} ({status}): {said}", code)
