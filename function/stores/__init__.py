"""The store registry: a new backend is one module and one line in `_FACTORIES`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import ContextRecord, Deletion, Listed, Store, Stored


def _filesystem(settings: Settings, telemetry: Telemetry) -> Store[Any]:
    from .filesystem import FilesystemStore

    return FilesystemStore.from_settings(settings)


def _configmap(settings: Settings, telemetry: Telemetry) -> Store[Any]:
    from .configmap import ConfigMapStore

    return ConfigMapStore.from_settings(settings, telemetry)


def _s3(settings: Settings, telemetry: Telemetry) -> Store[Any]:
    from .s3 import S3Store

    return S3Store.from_settings(settings, telemetry)


_FACTORIES: dict[str, Callable[[Settings, Telemetry], Store[Any]]] = {
    "filesystem": _filesystem,
    "configmap": _configmap,
    "s3": _s3,
}


def open_store(backend: str, settings: Settings, telemetry: Telemetry = NOOP) -> Store[Any]:
    """A checked store; `telemetry` is for the store's own metrics (`telemetry.retried`)."""
    factory = _FACTORIES.get(backend)
    if factory is None:
        raise ConfigurationError(
            "BUILD_CONTEXT_STORAGE", f"the {backend!r} store is not available in this build"
        )
    store = factory(settings, telemetry)
    store.check()
    return store


__all__ = ["ContextRecord", "Deletion", "Listed", "Store", "Stored", "open_store"]
