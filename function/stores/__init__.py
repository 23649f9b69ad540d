"""The store registry.

A new store is its package under function/stores/ (the `Store`, built by
`from_settings(settings, telemetry)`, its provenance envelope kept with each context,
`setting_names` and `docs_page` declared; nothing outside the package imports its modules), one
line in `BACKENDS` naming a public class of the package, and one in `LOCATIONS` if `verify`
reads the store's contextUri. Then three edits outside it: its settings in settings.py (the
fields, its name in `storage`, and in `overflow_storage` if it can take a ConfigMap's
overflow), its name in contract.Storage.backend, and its page in docs/ (`docs_page`); then
regenerate the settings documents and schemas (runtimes/__init__.py lists the commands).
tests/test_registries.py fails while any of that is missing, tests/test_registry_names.py when
a module outside the package names the store (save those three). docs/stores.md: the interface.

Every store class is imported only when chosen, so a build without boto3 or the Kubernetes
client still runs the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import ContextRecord, Deletion, Listed, Store, Stored

BACKENDS = {
    "filesystem": "function.stores.filesystem:FilesystemStore",
    "configmap": "function.stores.configmap:ConfigMapStore",
    "s3": "function.stores.s3:AttestedS3Store",
    "oci": "function.stores.oci:AttestedOCIStore",
}
LOCATIONS = {
    "s3://": "function.stores.s3:read_location",
    "oci://": "function.stores.oci:read_location",
}
"""Where `verify` reads a context or an envelope from a store, by the location's scheme (the
reply's contextUri and provenance.envelope); anything else is a file."""


def open_store(backend: str, settings: Settings, telemetry: Telemetry = NOOP) -> Store[Any]:
    """A checked store; `telemetry` is for the store's own metrics (`telemetry.retried`)."""
    where = BACKENDS.get(backend)
    if where is None:
        raise ConfigurationError(
            "BUILD_CONTEXT_STORAGE", f"the {backend!r} store is not available in this build"
        )
    store: Store[Any] = _load(where).from_settings(settings, telemetry)
    store.check()
    return store


def location_reader(location: str) -> Callable[[str, int], bytes] | None:
    """The store function that reads `location` (at most a limit + 1 bytes), or None."""
    for scheme, where in LOCATIONS.items():
        if location.startswith(scheme):
            reader: Callable[[str, int], bytes] = _load(where)
            return reader
    return None


def _load(where: str) -> Any:
    """`module:name`, imported only now (a build without boto3 still runs the other stores)."""
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BACKENDS",
    "LOCATIONS",
    "ContextRecord",
    "Deletion",
    "Listed",
    "Store",
    "Stored",
    "location_reader",
    "open_store",
]
