"""What may go into a log line or a message: credentials redacted, length capped."""

from __future__ import annotations

from ..credentials import redact as redact_credentials


def redact(text: str, limit: int = 500) -> str:
    """Credentials hidden (URL userinfo, tokens, keys: credentials.redaction), then the length
    capped; redacted before the cap, so a cut never keeps a secret whose marker it dropped."""
    text = redact_credentials(text)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_cause(error: BaseException) -> str:
    """`Type: message` of the exception a failure came from, for the log line."""
    return redact(f"{type(error).__name__}: {error}")
