"""The PingSource event's data: what a cleanup run may be asked for, and the TTL floor.

A PingSource sends its `data` as configured: empty, or a JSON object with `dryRun` and
`ttlSeconds` (contract.CleanupRequest). It can only make a run stricter, and a TTL below
BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS is refused: TTL policy belongs to configuration, and a
mistyped schedule must not empty the stores. Anything not understood is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .contract import PING, CleanupRequest
from .http_errors import HttpError

PING_DATA = (
    "the PingSource data must be empty or a JSON object with only dryRun (boolean) and "
    "ttlSeconds (integer, at least BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS), "
    'e.g. {"dryRun": true, "ttlSeconds": 86400}'
)


def cleanup_request(data: Any, min_ttl_seconds: int) -> CleanupRequest:
    """The cleanup a ping's data asks for; raises HttpError (400)."""
    try:
        request = CleanupRequest.model_validate(_json_object(data))
    except ValidationError as error:
        problems = "; ".join(
            f"data.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise HttpError(400, f"{problems}; {PING_DATA}") from None
    ttl = request.ttl_seconds
    if ttl is not None and ttl < min_ttl_seconds:
        raise HttpError(
            400,
            f"data.ttlSeconds: {ttl} is below the floor of {min_ttl_seconds} s "
            "(BUILD_CONTEXT_CLEANUP_MIN_TTL_SECONDS): ask for at least that, or lower the "
            f"setting (TTL policy belongs to configuration); {PING_DATA}",
        )
    return request


def _json_object(data: Any) -> dict[str, Any]:
    """The data as a JSON object: the SDK leaves undecoded data as text or bytes, and empty
    data is an empty object."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data) if data.strip() else None
        except (ValueError, RecursionError, MemoryError):
            raise HttpError(400, f"data of {PING} is not JSON: {PING_DATA}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HttpError(400, f"data of {PING}: {PING_DATA}")
    return data
