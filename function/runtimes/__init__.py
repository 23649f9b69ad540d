"""The runtime registry: a new runtime is one module and one line here."""

from __future__ import annotations

from ..boundary import quote
from ..errors import FieldError, UnsupportedRuntime
from .base import Rendered, Runtime
from .go import RUNTIME as GO
from .nodejs import RUNTIME as NODEJS
from .python import RUNTIME as PYTHON

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (PYTHON, NODEJS, GO)}
_BY_ALIAS = {alias: r for r in RUNTIMES.values() for alias in (r.name, *r.aliases)}


def lookup(name: str) -> Runtime | None:
    """The runtime of a name or alias, in any letter case; nothing else is trimmed."""
    return _BY_ALIAS.get(name.lower())


def resolve(name: str, version: str | None) -> tuple[Runtime, str]:
    runtime = lookup(name)
    if runtime is None:
        known = ", ".join(sorted(_BY_ALIAS))
        message = f"runtime: {quote(name)} is not supported; use one of {known}"
        raise UnsupportedRuntime(message, [FieldError(message, field="runtime")])
    if version is None:
        return runtime, runtime.default_version
    if version not in runtime.versions:
        message = (
            f"runtimeVersion: {quote(version)} is not supported for {runtime.name}; "
            f"use one of {', '.join(runtime.versions)} (default {runtime.default_version})"
        )
        raise UnsupportedRuntime(message, [FieldError(message, field="runtimeVersion")])
    return runtime, version


__all__ = ["RUNTIMES", "Rendered", "Runtime", "lookup", "resolve"]
