"""Wiring: settings -> stores -> use-cases, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from .cleanup import CleanupService
from .service import BuildContextService
from .settings import Settings, load_settings
from .stores import Store, open_store
from .telemetry import Telemetry


@dataclass
class App:
    settings: Settings
    service: BuildContextService
    stores: list[Store]
    telemetry: Telemetry
    cleanup: CleanupService

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, telemetry: Telemetry | None = None
    ) -> App:
        settings = settings or load_settings()
        telemetry = telemetry or Telemetry()
        primary = open_store(settings.storage, settings, telemetry)
        overflow = (
            open_store(settings.overflow_storage, settings, telemetry)
            if settings.overflow_storage and settings.overflow_storage != settings.storage
            else None
        )
        service = BuildContextService(settings, primary, overflow, telemetry)
        stores = [primary, *([overflow] if overflow else [])]
        cleanup = CleanupService(stores, settings, telemetry=telemetry)
        return cls(settings, service, stores, telemetry, cleanup)

    def close(self) -> None:
        for store in self.stores:
            store.close()
