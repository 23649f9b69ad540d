"""The formats of single settings, each a check that returns the value or raises ValueError
(pydantic reports it naming the variable); settings.py applies them to its fields."""

from __future__ import annotations

import re

from .boundary import DNS_LABEL, DNS_SUBDOMAIN, DNS_SUBDOMAIN_MAX, is_dns_subdomain

# A token subject of a ServiceAccount, as Kubernetes writes it: a namespace (DNS-1123 label) and
# a ServiceAccount name (DNS-1123 subdomain, at most 253 characters).
SUBJECT = re.compile(
    rf"system:serviceaccount:{DNS_LABEL.pattern}:(?=.{{1,{DNS_SUBDOMAIN_MAX}}}\Z){DNS_SUBDOMAIN.pattern}"
)
REGISTRY_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?")
REPOSITORY_PATH = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
"""The distribution spec's repository-name grammar (what every registry accepts)."""


def subjects(value: str) -> str:
    """A comma-separated list of token subjects or bare ServiceAccount names."""
    for item in (part.strip() for part in value.split(",")):
        if item and not (SUBJECT.fullmatch(item) or is_dns_subdomain(item)):
            raise ValueError(
                f"{item[:80]!r} is neither `system:serviceaccount:NAMESPACE:NAME` nor a "
                "ServiceAccount name"
            )
    return value


def registry_mirror(value: str) -> str:
    if value and not re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*/", value):
        raise ValueError(f"{value[:80]!r} must be a registry host and path ending in '/'")
    return value


def key_prefix(value: str) -> str:
    if value.startswith("/") or (value and not value.endswith("/")):
        raise ValueError(f"{value[:80]!r} must not start with '/' and must end with '/'")
    return value


def registry_host(value: str) -> str:
    if value and not REGISTRY_HOST.fullmatch(value):
        raise ValueError(
            f"{value[:80]!r} must be a registry host with an optional port, without scheme "
            "or path, e.g. registry.example.com:5000"
        )
    return value


def repository_path(value: str) -> str:
    if not REPOSITORY_PATH.fullmatch(value) or len(value) > 100:
        raise ValueError(
            f"{value[:80]!r} must be a lowercase repository path of at most 100 characters "
            "(components of a-z, 0-9 and single . _ - separators, joined by /)"
        )
    return value
