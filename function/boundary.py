"""The input boundary: every request string is bounded, fully matched and encoded here, once.

A value that reaches a reply header, a ConfigMap name/label/annotation, S3 user metadata, a
filesystem record or a log line has passed one of these checks first. Patterns are used with
`fullmatch` only (`$` also matches before a final newline). Messages quote request text through
`quote` (or `escaped`), which redacts credentials and then shortens it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import credentials

DNS_LABEL_MAX = 63
DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
"""RFC 1123 label as Kubernetes checks it: function names, namespaces, label values."""
DNS_SUBDOMAIN_MAX = 253
DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
"""DNS-1123 subdomain as Kubernetes checks object names (ConfigMaps, owners): dot-separated
labels with no bound of their own, `DNS_SUBDOMAIN_MAX` in all."""

EVENT_ID_MAX = 256
"""The CloudEvent `id`: 1-256 visible ASCII characters (Knative's brokers send UUIDs)."""
EVENT_SOURCE_MAX = 1024
"""The CloudEvent `source`: a URI-reference of 1-1024 visible ASCII characters."""
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")

METADATA_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
METADATA_VALUE_MAX = 1024
"""Characters per metadata value."""
METADATA_MAX_BYTES = 768
"""The whole `metadata` object as compact ASCII JSON (non-ASCII as \\uXXXX): it is stored in S3
user metadata, whose 2 KiB budget it shares with the record (about 450 bytes) and the
percent-encoded request id (up to 768), so a stored context always keeps all of it."""

DEPENDENCY_MAX = 1000
"""Characters per entry of `dependencies` (for an object, name and range together). pip, npm
and go set no bound of their own; real requirements stay under 200 characters, a pinned VCS
URL under 300. Bounded before any parser reads it: packaging reads markers at about 270 ns a
character."""

QUOTE_CHARS = 64
"""How much of a request value a message quotes."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr` of the value's first `limit` characters, credentials redacted first (a cut can
    drop the `@` that shows `user:password@` is one), with the full length when cut: control
    and unprintable characters come out escaped, so a message is one line of bounded size."""
    text = value if isinstance(value, str) else str(value)
    shown = credentials.redact(text)
    if len(shown) <= limit and len(text) <= credentials.WINDOW:
        return repr(shown)
    return f"{shown[:limit]!r}…({len(text)} chars)"


def escaped(value: str, limit: int = QUOTE_CHARS) -> str:
    """The value as printable ASCII (backslash escapes), credentials redacted, cut to `limit`
    characters: for echoing an identifier that failed its check into a JSON reply body (never
    into a header)."""
    shown = credentials.redact(value)
    text = shown[:limit].encode("unicode_escape").decode("ascii")
    text = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)
    whole = len(shown) <= limit and len(value) <= credentials.WINDOW
    return text if whole else f"{text}...({len(value)} chars)"


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and DNS_LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= DNS_SUBDOMAIN_MAX
        and DNS_SUBDOMAIN.fullmatch(value) is not None
    )


def dns_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label, or None."""
    if not value:
        return "is empty"
    if len(value) > DNS_LABEL_MAX:
        return (
            f"is {len(value)} characters; the limit is {DNS_LABEL_MAX} (a Kubernetes label value)"
        )
    if DNS_LABEL.fullmatch(value) is None:
        return (
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return None


TRACE_CONTEXT_MAX = 512
"""W3C trace context: `traceparent` is 55 characters, `tracestate` at most 512."""
_TRACE_CONTEXT = re.compile(rf"[\x20-\x7e]{{1,{TRACE_CONTEXT_MAX}}}")


def trace_context(carrier: Mapping[str, Any] | None) -> dict[str, str]:
    """`traceparent` and `tracestate` from an event or HTTP headers, only when they are printable
    ASCII within the W3C bound: the propagator checks the rest, but it logs what it refuses
    whole, so nothing else reaches it."""
    if carrier is None:
        return {}
    found = {}
    for key in ("traceparent", "tracestate"):
        value = carrier.get(key)
        if isinstance(value, str) and _TRACE_CONTEXT.fullmatch(value):
            found[key] = value
    return found


@dataclass(frozen=True)
class EventIdentity:
    """The incoming event's `id` and `source`, fit for records, replies and logs.

    When one failed its check, `problem` says why and `id` is an escaped, shortened stand-in
    used only to answer (the request is refused)."""

    id: str
    source: str
    problem: str | None = None
    field: str | None = None


def event_identity(attributes: Mapping[str, Any]) -> EventIdentity:
    raw_id, raw_source = attributes.get("id"), attributes.get("source")
    event_id = raw_id if isinstance(raw_id, str) else ""
    source = raw_source if isinstance(raw_source, str) else ""
    for name, value, limit in (
        ("id", event_id, EVENT_ID_MAX),
        ("source", source, EVENT_SOURCE_MAX),
    ):
        if len(value) > limit or _VISIBLE_ASCII.fullmatch(value) is None:
            problem = (
                f"the CloudEvent {name} {quote(value)} must be 1-{limit} visible ASCII characters "
                "(no spaces or control characters); send e.g. a UUID"
                if name == "id"
                else f"the CloudEvent {name} {quote(value)} must be a URI-reference of 1-{limit} "
                "visible ASCII characters (percent-encode anything else)"
            )
            return EventIdentity(
                event_id if _safe_id(event_id) else escaped(event_id),
                source if is_event_source(source) else escaped(source),
                problem,
                name,
            )
    return EventIdentity(event_id, source)


def _safe_id(value: str) -> bool:
    return len(value) <= EVENT_ID_MAX and _VISIBLE_ASCII.fullmatch(value) is not None


def is_event_source(value: str) -> bool:
    """The CloudEvent `source` check: 1-`EVENT_SOURCE_MAX` visible ASCII characters."""
    return len(value) <= EVENT_SOURCE_MAX and _VISIBLE_ASCII.fullmatch(value) is not None


def metadata_bytes(metadata: Mapping[str, str]) -> int:
    """Size of `metadata` as the stores keep it at most: compact ASCII JSON."""
    return len(json.dumps(dict(metadata), ensure_ascii=True, separators=(",", ":")))


def json_document(text: str | bytes) -> Any:
    """The caller's JSON, decoded; every way Python's decoder gives up is one ValueError that
    says why: bad syntax, a number over 4300 digits, nesting deeper than the stack (a
    RecursionError, which would otherwise end as InternalError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it nests too deeply to decode") from None
    except MemoryError:
        raise ValueError("it is too large to decode") from None
