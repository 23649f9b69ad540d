"""What may go into a log line or a message: URL credentials dropped, length capped."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str, limit: int = 500) -> str:
    """Drop credentials of URLs (`scheme://user:token@host`) and cap the length."""
    text = _USERINFO.sub("***@", text)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_cause(error: BaseException) -> str:
    """`Type: message` of the exception a failure came from, for the log line."""
    return redact(f"{type(error).__name__}: {error}")
