"""Archives and context records for store tests: one way to build them, shared by every backend."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from function.archive import Archive
from function.stores.base import ContextRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
FAST_RETRIES: dict[str, Any] = {"retry_attempts": 3, "retry_base_delay_seconds": 0.01}
"""Settings for stores under test: few attempts and short backoffs, the same for every backend."""
FAST_RETRIES_ENV = {
    "BUILD_CONTEXT_RETRY_ATTEMPTS": str(FAST_RETRIES["retry_attempts"]),
    "BUILD_CONTEXT_RETRY_BASE_DELAY_SECONDS": str(FAST_RETRIES["retry_base_delay_seconds"]),
}
"""The same, for a function server started by a test."""


def record(
    built: Archive,
    created: datetime = NOW,
    ttl: timedelta = HOUR,
    *,
    namespace: str = "team-a",
    function: str = "fix-it",
    request_id: str = "req-1",
    metadata: dict[str, str] | None = None,
    **changes: Any,
) -> ContextRecord:
    """The record a request for `built` would store; `changes` replace any other field."""
    made = ContextRecord.for_archive(
        built,
        created_at=created,
        ttl=ttl,
        namespace=namespace,
        function=function,
        runtime="python",
        runtime_version="3.13",
        request_id=request_id,
        metadata=metadata or {},
    )
    return replace(made, **changes) if changes else made


def incompressible(size: int) -> Archive:
    """Random bytes standing in for a large archive: a store only moves bytes."""
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    return Archive(data, digest, digest, ())
