"""The context record, described once: what a store keeps beside the archive, field by field.

Each attribute of `ContextRecord` carries a `Wire`: how its value is written (as JSON in the
record file, as text in labels, annotations and user metadata), where it may go, what the reply
calls it and whether the provenance records it. The stores' codecs, the reply (create.py) and
the provenance statement loop over `fields()`; a store adds only its own key rule (a prefix,
kebab-case names, its size budget). A new field is one annotated attribute here (docs/stores.md).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, replace
from dataclasses import field as attribute
from dataclasses import fields as attributes
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from pydantic.alias_generators import to_camel

from .boundary import EVENT_ID_MAX
from .contract import utc_text

if TYPE_CHECKING:
    from .archive import Archive


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Codec:
    """One kind of value: as JSON (the record file) and as text (labels, annotations, user
    metadata). Reading raises ValueError (or TypeError) on what is not such a value."""

    to_json: Callable[[Any], Any]
    from_json: Callable[[Any], Any]
    to_text: Callable[[Any], str]
    from_text: Callable[[str], Any]
    free_text: bool = False
    """Any printable characters: a store with a narrower alphabet (S3 headers) escapes it."""


def _mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def _bounded(value: Any) -> str:
    """The CloudEvent id: the boundary refuses one over EVENT_ID_MAX; a direct caller's is cut."""
    return str(value)[:EVENT_ID_MAX]


NAME = Codec(str, str, str, str)
"""Names, versions and hex digests: checked where they arrive, the same text everywhere."""
COUNT = Codec(int, int, str, int)
TIME = Codec(utc_text, lambda v: parse_time(str(v)), utc_text, parse_time)
TEXT = Codec(str, str, str, str, free_text=True)
"""Free text from the request, bounded and checked where it arrives."""
EVENT_ID = Codec(_bounded, _bounded, _bounded, str, free_text=True)
MAPPING = Codec(
    _mapping,
    _mapping,
    lambda v: json.dumps(dict(v), sort_keys=True, separators=(",", ":"), ensure_ascii=True),
    lambda text: _mapping(json.loads(text)),
)
"""The request's metadata: a JSON object; as text, compact ASCII JSON with sorted keys."""
FLAG = Codec(bool, bool, lambda v: "true" if v else "false", lambda t: t.strip().lower() == "true")


class Place(enum.Enum):
    """Where a field goes besides the record file (which holds every field)."""

    TEXT = "text"
    """The store's text slots: ConfigMap annotations, S3 user metadata, OCI record annotations."""
    LABEL = "label"
    """As TEXT, and its value is a Kubernetes label value (checked at the boundary): the
    ConfigMap store keeps it as a label, to select by."""
    PIN = "pin"
    """Set by users through the store's own pin (a label, an object tag, a registry tag);
    only the record file writes it."""


@dataclass(frozen=True)
class Wire:
    """How one field is written and where it goes: the annotation of a record attribute."""

    codec: Codec
    place: Place = Place.TEXT
    reply: str | None = None
    """The `BuildContextCreated` attribute that echoes the stored value (None: not echoed)."""
    attested: bool = False
    """Recorded in the provenance statement's externalParameters under its wire name."""


@dataclass(frozen=True)
class RecordField:
    """One row of the table: a `ContextRecord` attribute and its `Wire`."""

    attr: str
    name: str
    """camelCase: the record file's key and the provenance's; stores derive theirs from it."""
    kebab: str
    """kebab-case: the key (after the store's prefix) in labels, annotations, user metadata."""
    wire: Wire
    default: Any
    """What reading gives when the field is absent (MISSING: it must be there)."""

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def text_slot(self) -> bool:
        return self.wire.place is not Place.PIN

    def text(self, record: ContextRecord) -> str:
        return self.wire.codec.to_text(getattr(record, self.attr))


@dataclass(frozen=True)
class ContextRecord:
    """What a store keeps beside the archive, what cleanup reads back and the reply echoes."""

    namespace: Annotated[str, Wire(NAME)]
    function: Annotated[str, Wire(NAME, Place.LABEL, reply="lambda_function", attested=True)]
    runtime: Annotated[str, Wire(NAME, Place.LABEL, reply="runtime", attested=True)]
    runtime_version: Annotated[str, Wire(NAME, reply="runtime_version", attested=True)]
    content_hash: Annotated[str, Wire(NAME, reply="content_hash")]
    archive_sha256: Annotated[str, Wire(NAME, reply="archive_sha256")]
    size_bytes: Annotated[int, Wire(COUNT, reply="size_bytes")]
    created_at: Annotated[datetime, Wire(TIME, reply="created_at")]
    expires_at: Annotated[datetime, Wire(TIME, reply="expires_at")]
    request_id: Annotated[str, Wire(EVENT_ID, reply="created_by_request_id")] = ""
    metadata: Annotated[Mapping[str, str], Wire(MAPPING, reply="metadata")] = attribute(
        default_factory=dict
    )
    retain: Annotated[bool, Wire(FLAG, Place.PIN)] = False

    @classmethod
    def for_archive(
        cls, archive: Archive, *, created_at: datetime, ttl: timedelta, **fields: Any
    ) -> ContextRecord:
        """The record of a new context: the archive's digests and size, the expiry from `ttl`,
        and the request's fields (`ValidRequest.recorded`, namespace, request id)."""
        return cls(
            content_hash=archive.content_hash,
            archive_sha256=archive.archive_sha256,
            size_bytes=archive.size_bytes,
            created_at=created_at,
            expires_at=created_at + ttl,
            **fields,
        )

    def refreshed(self, expires_at: datetime) -> ContextRecord:
        return replace(self, expires_at=max(self.expires_at, expires_at))

    def expired(self, now: datetime, stricter_ttl: timedelta | None = None) -> bool:
        if stricter_ttl is not None and now - self.created_at > stricter_ttl:
            return True
        return now >= self.expires_at


MODEL: type[ContextRecord] = ContextRecord
"""The model the codecs read records back into (a test extends it to prove every store keeps
a new field)."""


_TABLES: dict[type[ContextRecord], tuple[RecordField, ...]] = {}


def _table(model: type[ContextRecord]) -> tuple[RecordField, ...]:
    if model in _TABLES:
        return _TABLES[model]
    hints = get_type_hints(model, include_extras=True)
    table = []
    for found in attributes(model):
        [wire] = [m for m in getattr(hints[found.name], "__metadata__", ()) if isinstance(m, Wire)]
        default = found.default_factory() if found.default_factory is not MISSING else found.default
        name = to_camel(found.name)
        kebab = "".join(f"-{c.lower()}" if c.isupper() else c for c in name)
        table.append(RecordField(found.name, name, kebab, wire, default))
    _TABLES[model] = tuple(table)
    return _TABLES[model]


def fields(model: type[ContextRecord] | None = None) -> tuple[RecordField, ...]:
    """The table, in attribute order: of `model`, or of the one records are read into."""
    return _table(model or MODEL)


def field(attr: str) -> RecordField:
    """The row of one attribute (KeyError when the record has no such field)."""
    found = [f for f in fields() if f.attr == attr]
    if not found:
        raise KeyError(attr)
    return found[0]


def build(values: Mapping[str, Any]) -> ContextRecord:
    """A record from attribute values; absent optional fields take their defaults."""
    return MODEL(**values)


def to_json(record: ContextRecord) -> dict[str, Any]:
    """The record file's object (filesystem store): every field under its wire name."""
    return {f.name: f.wire.codec.to_json(getattr(record, f.attr)) for f in fields(type(record))}


def from_json(data: Any) -> ContextRecord:
    """KeyError when a required field is missing, ValueError when one is not its kind."""
    if not isinstance(data, Mapping):
        raise ValueError("a record is a JSON object")
    try:
        return build(
            {
                f.attr: f.wire.codec.from_json(data[f.name])
                for f in fields()
                if f.name in data or f.required
            }
        )
    except TypeError as error:
        raise ValueError(f"unreadable record: {error}") from None


def text_fields(record: ContextRecord) -> list[tuple[RecordField, str]]:
    """Every field a store writes as text (all but the pins), with its text."""
    return [(f, f.text(record)) for f in fields(type(record)) if f.text_slot]


def from_text(lookup: Callable[[RecordField], str | None], **known: Any) -> ContextRecord:
    """A record from a store's text slots: `lookup` finds a field's text under the store's key
    rule (None, or empty for an optional field: absent); `known` are values the store keeps
    elsewhere (its pins). KeyError when a required field is absent, ValueError when one is not
    its kind."""
    values = dict(known)
    for f in fields():
        if f.attr in values:
            continue
        text = lookup(f)
        if text is None or (text == "" and not f.required):
            if f.required:
                raise KeyError(f.name)
        else:
            values[f.attr] = f.wire.codec.from_text(text)
    return build(values)


def echoed(record: ContextRecord) -> dict[str, Any]:
    """The reply's fields that echo what is stored, by their `BuildContextCreated` names."""
    return {f.wire.reply: getattr(record, f.attr) for f in fields(type(record)) if f.wire.reply}


def attested(values: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance's externalParameters that come from the record: the attested fields of
    `values` (attribute -> value, `ValidRequest.recorded`) under their wire names, as JSON."""
    return {f.name: f.wire.codec.to_json(values[f.attr]) for f in fields() if f.wire.attested}
