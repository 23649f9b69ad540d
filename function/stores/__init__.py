"""The store registry: a new backend is one module and one line in `_FACTORIES`."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigurationError
from ..settings import Settings
from ..telemetry import NOOP, Telemetry
from .base import ContextRecord, Listed, Store, Stored


def _filesystem(settings: Settings, telemetry: Telemetry) -> Store:
    from .filesystem import FilesystemStore

    return FilesystemStore(settings.fs_root)


def _configmap(settings: Settings, telemetry: Telemetry) -> Store:
    from .configmap import ConfigMapStore

    return ConfigMapStore.from_settings(settings, telemetry)


def _s3(settings: Settings, telemetry: Telemetry) -> Store:
    from .s3_provenance import AttestedS3Store

    return AttestedS3Store.from_settings(settings, telemetry)


_FACTORIES: dict[str, Callable[[Settings, Telemetry], Store]] = {
    "filesystem": _filesystem,
    "configmap": _configmap,
    "s3": _s3,
}


def open_store(backend: str, settings: Settings, telemetry: Telemetry = NOOP) -> Store:
    """A checked store; `telemetry` is for the store's own metrics (`telemetry.retried`)."""
    factory = _FACTORIES.get(backend)
    if factory is None:
        raise ConfigurationError(
            "BUILD_CONTEXT_STORAGE", f"the {backend!r} store is not available in this build"
        )
    store = factory(settings, telemetry)
    store.check()
    return store


__all__ = ["ContextRecord", "Listed", "Store", "Stored", "open_store"]
