"""Checks on the request's plain fields: TTL, metadata and owner reference."""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import boundary
from .boundary import quote
from .contract import OwnerReference
from .errors import FieldError, InvalidRequest
from .secret_scan import check_metadata
from .settings import Settings

_API_GROUP_VERSION = re.compile(r"(?:(?P<group>[^/]+)/)?(?P<version>[^/]+)")
_KIND = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def ttl(ttl: int | None, settings: Settings) -> int:
    if ttl is None:
        return settings.ttl_seconds
    if not 60 <= ttl <= settings.max_ttl_seconds:
        message = (
            f"ttlSeconds: {ttl} is outside 60..{settings.max_ttl_seconds}; ask for less or raise "
            "BUILD_CONTEXT_MAX_TTL_SECONDS"
        )
        raise InvalidRequest(message, [FieldError(message, field="ttlSeconds")])
    return ttl


def metadata(metadata: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """Bounded first (entries), then each key and value, then the size as stored, then
    credentials (secret_scan.check_metadata)."""
    if len(metadata) > settings.max_metadata_entries:
        message = (
            f"metadata: {len(metadata)} entries; the limit is {settings.max_metadata_entries} "
            "(BUILD_CONTEXT_MAX_METADATA_ENTRIES): send fewer"
        )
        raise InvalidRequest(message, [FieldError(message, field="metadata")])
    problems = []
    for key, value in metadata.items():
        if boundary.METADATA_KEY.fullmatch(key) is None:
            problems.append(
                FieldError(
                    f"key {quote(key)} must be 1-63 letters, digits, '.', '_' or '-', starting "
                    "and ending with a letter or digit",
                    field=f"metadata.{boundary.escaped(key)}",
                )
            )
        elif len(value) > boundary.METADATA_VALUE_MAX or not value.isprintable():
            problems.append(
                FieldError(
                    f"values are printable text of at most {boundary.METADATA_VALUE_MAX} "
                    "characters (no control or line-break characters)",
                    field=f"metadata.{key}",
                )
            )
    if not problems and (size := boundary.metadata_bytes(metadata)) > boundary.METADATA_MAX_BYTES:
        problems.append(
            FieldError(
                f"{size} bytes as ASCII JSON; the limit is {boundary.METADATA_MAX_BYTES} for all "
                "keys and values together (non-ASCII counts 6 bytes a character): send less",
                field="metadata",
            )
        )
    if problems:
        raise InvalidRequest(f"metadata: {problems[0].message}", problems)
    check_metadata(metadata, settings)
    return dict(sorted(metadata.items()))


def owner(owner: OwnerReference) -> None:
    """What Kubernetes accepts in an ownerReference, checked before anything is stored."""
    parts = _API_GROUP_VERSION.fullmatch(owner.api_version)
    group = parts["group"] if parts else None
    api_version_ok = (
        parts is not None
        and (group is None or boundary.is_dns_subdomain(group))
        and boundary.is_dns_label(parts["version"])
    )
    checks = (
        (
            api_version_ok,
            "apiVersion",
            f"apiVersion {quote(owner.api_version)} must be group/version (e.g. "
            "'lambda.example.com/v1') or a core version ('v1')",
        ),
        (
            _KIND.fullmatch(owner.kind) is not None,
            "kind",
            f"kind {quote(owner.kind)} must be a Kubernetes kind: an upper-case letter, then "
            "letters and digits, at most 63 (e.g. 'LambdaFunction')",
        ),
        (
            boundary.is_dns_subdomain(owner.name),
            "name",
            f"name {quote(owner.name)} must be a Kubernetes object name (DNS-1123 "
            "subdomain, at most 253 characters)",
        ),
        (
            _UID.fullmatch(owner.uid) is not None,
            "uid",
            f"uid {quote(owner.uid)} must be the owner's metadata.uid, a lowercase UUID "
            "like '6f1c2a9e-0b7d-4c3e-9a51-2f8e4d7c1b60'",
        ),
    )
    problems = [
        FieldError(message, field=f"owner.{name}") for ok, name, message in checks if not ok
    ]
    if problems:
        raise InvalidRequest(f"owner: {problems[0].message}", problems)
