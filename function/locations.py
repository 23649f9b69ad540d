"""Where `verify` reads a context and its envelope: a local file, or a store's location
(`s3://BUCKET/KEY`, `oci://REGISTRY/REPOSITORY@sha256:DIGEST`: stores.LOCATIONS names the
store function that reads it). Each read is bounded; a location that cannot be read raises
Unreadable (exit code 2)."""

from __future__ import annotations

from .boundary import quote
from .signing import UnusableInput


class Unreadable(UnusableInput):
    """The location cannot be read: missing, refused, or not the shape expected there."""


def read(location: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes, so that a larger input is refused by the check rather than
    filling memory (a registry's blob over the limit is refused while it is read)."""
    from .stores import location_reader  # the store packages import Unreadable from here

    reader = location_reader(location)
    if reader is not None:
        return reader(location, limit)
    try:
        with open(location, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as error:
        raise Unreadable(f"cannot read {quote(location, 200)}: {error.strerror}") from None
