"""The runtime registry.

A new runtime is its module (a `Runtime` with every fact: names, versions, entry file, base
images, descriptions, CLI parsing, dependency and lock rules, syntax check, rendering) and one
entry in `RUNTIMES` here. What derives from them follows: the image settings
(BUILD_CONTEXT_<KEY>_IMAGE, settings.py), what provenance records and `verify` renders with,
the request's schema, `create -d`. Then regenerate the generated documents (`python -m
function settings` into config/settings.env, `--format configmap` into
knative/base/settings-configmap.yaml, `--format markdown` into README's settings table,
`python -m function schemas`) and add the runtime to README's contract tables.
tests/test_registries.py fails while a fact is missing or a document is stale, and
tests/test_registry_names.py when a module other than its own names a runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..boundary import quote
from ..errors import FieldError, UnsupportedRuntime
from .base import BaseImage, Dependencies, Rendered, Runtime
from .go import RUNTIME as GO
from .nodejs import RUNTIME as NODEJS
from .python import RUNTIME as PYTHON

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (PYTHON, NODEJS, GO)}
DEFAULT = PYTHON
"""The runtime of a request that names none."""
IMAGES: tuple[BaseImage, ...] = tuple(i for r in RUNTIMES.values() for i in r.images)
"""Every base image setting, in registry order (as the settings reference lists them)."""
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


def cli_dependencies(values: Sequence[str], name: object) -> Dependencies:
    """`create -d VALUE ...` as the request's `dependencies`, for the runtime `name` (None: the
    default); an unknown runtime gets the list, and validation says what is wrong."""
    runtime = lookup(name) if isinstance(name, str) else DEFAULT if name is None else None
    return runtime.cli_dependencies(values) if runtime else list(values)


__all__ = [
    "DEFAULT",
    "IMAGES",
    "RUNTIMES",
    "BaseImage",
    "Rendered",
    "Runtime",
    "cli_dependencies",
    "lookup",
    "resolve",
]
