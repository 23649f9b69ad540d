"""The store registry: a new backend is one module (or package) and one line in `BACKENDS`.

Every store class is built the same way, `from_settings(settings, telemetry)`, and imported
only when chosen, so a build without boto3 or the Kubernetes client still runs the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigurationError
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import ContextRecord, Deletion, Listed, Store, Stored

BACKENDS = {
    "filesystem": "function.stores.filesystem:FilesystemStore",
    "configmap": "function.stores.configmap:ConfigMapStore",
    "s3": "function.stores.s3_provenance:AttestedS3Store",
    "oci": "function.stores.oci.provenance:AttestedOCIStore",
}


def open_store(backend: str, settings: Settings, telemetry: Telemetry = NOOP) -> Store[Any]:
    """A checked store; `telemetry` is for the store's own metrics (`telemetry.retried`)."""
    where = BACKENDS.get(backend)
    if where is None:
        raise ConfigurationError(
            "BUILD_CONTEXT_STORAGE", f"the {backend!r} store is not available in this build"
        )
    module, name = where.split(":")
    store: Store[Any] = getattr(importlib.import_module(module), name).from_settings(
        settings, telemetry
    )
    store.check()
    return store


__all__ = ["BACKENDS", "ContextRecord", "Deletion", "Listed", "Store", "Stored", "open_store"]
