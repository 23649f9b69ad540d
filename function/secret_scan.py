"""BUILD_CONTEXT_SECRET_SCAN applied: credentials in the request refused, or let through as
warnings, with file, line and kind only (never the secret), at most `MAX_FINDINGS` of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from . import boundary, credentials
from .errors import FieldError, InvalidRequest, InvalidSource
from .settings import Settings

_FIX = (
    "keep credentials out of the source (read them at run time from a mounted Secret or the "
    f"environment), or mark a false positive with '{credentials.ALLOW_MARKER}' in a comment on "
    "that line"
)


def check_credentials(
    files: Mapping[str, str], settings: Settings, field_of: Callable[[str], str]
) -> credentials.Scan:
    """Credentials in these files: refused (InvalidSource) with `refuse`, returned as
    warnings with `warn`, not looked for with `off`."""
    if settings.secret_scan == "off":
        return credentials.NOTHING
    found = credentials.scan(files)
    if not found or settings.secret_scan == "warn":
        return found
    problems = [
        FieldError(
            f"line {f.line}: {f.kind}; {_FIX}", field=field_of(f.file), file=f.file, line=f.line
        )
        for f in found.findings
    ]
    first = found.findings[0]
    raise InvalidSource(
        f"{first.file}: line {first.line}: {first.kind} in the source ({found.count_text()}"
        f"{_listed(found)}); remove it and read it at run time from a Secret, or mark a false "
        f"positive with '{credentials.ALLOW_MARKER}' on that line",
        problems,
        omitted=found.omitted,
    )


def _listed(found: credentials.Scan) -> str:
    return f", the first {len(found.findings)} listed" if found.omitted else ""


def check_metadata(metadata: Mapping[str, str], settings: Settings) -> None:
    """A credential in `metadata` (key or value) is refused whatever BUILD_CONTEXT_SECRET_SCAN
    says, unless `off`: metadata is stored with the context and echoed in every reply (and a
    reuse's reply), where a warning could not take it back. The value is never quoted; the
    key is named, redacted."""
    if settings.secret_scan == "off" or not metadata:
        return
    keys = list(metadata)
    # One `key=value` line per entry, read as a config file: the line number is the entry.
    text = "\n".join(f"{key}={value}" for key, value in metadata.items())
    found = credentials.scan_text("metadata", text, "config")
    if not found:
        return
    problems = [
        FieldError(
            f"the entry holds a credential ({f.kind}); metadata is stored and echoed in every "
            "reply: send a reference (a ticket id, a Secret's name), never the credential",
            field=f"metadata.{boundary.escaped(keys[f.line - 1])}",
        )
        for f in found.findings
    ]
    raise InvalidRequest(
        f"{problems[0].field}: {problems[0].message} ({found.count_text()})",
        problems,
        omitted=found.omitted,
    )
