"""Wiring: settings -> stores -> use-cases, built by `App.from_settings` (the factory).

Whoever serves or runs a use-case builds its own App and hands it on: the server one per process
(server.py: `Function(app)` for parliament, the edge's sender check), the command line one per
command, a test one per test. No module holds an App.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .auth import Senders
from .cleanup import CleanupService
from .create import CreateService
from .provenance import SigningKey
from .settings import Settings, load_settings
from .stores import Store, open_store
from .stores.traced import TracedStore
from .telemetry import Exporters, Telemetry, install_exporters


@dataclass
class App:
    settings: Settings
    create: CreateService
    stores: list[Store[Any]]
    telemetry: Telemetry
    cleanup: CleanupService
    exporters: Exporters | None = None
    senders: Senders | None = None
    """Set when BUILD_CONTEXT_AUTH=oidc: every event must carry a sender's token."""

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, telemetry: Telemetry | None = None
    ) -> App:
        """Without `telemetry`, installs this process's exporters (Prometheus, OTLP)."""
        settings = settings or load_settings()
        signer = (
            SigningKey.load(Path(settings.signing_key_file)) if settings.signing_key_file else None
        )
        exporters = None
        if telemetry is None:
            exporters = install_exporters()
            telemetry = Telemetry(
                exporters.meter_provider,
                exporters.tracer_provider,
                stage_spans="traces" in exporters.otlp,
            )
        primary = TracedStore(open_store(settings.storage, settings, telemetry), telemetry)
        overflow = (
            TracedStore(open_store(settings.overflow_storage, settings, telemetry), telemetry)
            if settings.overflow_storage and settings.overflow_storage != settings.storage
            else None
        )
        create = CreateService(settings, primary, overflow, telemetry, signer=signer)
        stores: list[Store[Any]] = [primary, *([overflow] if overflow else [])]
        cleanup = CleanupService(stores, settings, telemetry=telemetry)
        telemetry.declare([s.backend for s in stores], settings.handles("cleanup"))
        senders = Senders(settings) if settings.auth == "oidc" else None
        return cls(settings, create, stores, telemetry, cleanup, exporters, senders)

    def close(self) -> None:
        for store in self.stores:
            store.close()
        if self.exporters is not None:
            self.exporters.shutdown()
