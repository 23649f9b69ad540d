"""Wiring: settings -> stores -> use-cases, built once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .auth import HandlerPolicy, TokenVerifier, policies
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
    verifier: TokenVerifier | None = None
    """Set when BUILD_CONTEXT_AUTH=oidc: every event must carry a sender's token."""
    policies: dict[str, HandlerPolicy] | None = None

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
        oidc = settings.auth == "oidc"
        return cls(
            settings,
            create,
            stores,
            telemetry,
            cleanup,
            exporters,
            TokenVerifier(settings) if oidc else None,
            policies(settings) if oidc else None,
        )

    def close(self) -> None:
        for store in self.stores:
            store.close()
        if self.exporters is not None:
            self.exporters.shutdown()
