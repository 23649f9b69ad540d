"""Credentials hidden from text that is going to be quoted or logged.

Applied before a quote is cut (boundary.quote): a quote cut to 64 characters can cut off the
`@` that marks `user:password@`, and with it the only sign that what remains is a password.
Redaction replaces more than the scanner reports (any userinfo, any secret-named query
parameter, every pip index option's value): a message loses a detail, never keeps a secret.

Every pattern is linear: anchored on a literal or at the start of a run (look-behind), with
possessive repetitions.
"""

from __future__ import annotations

import functools
import re

from .tokens import TOKEN_RULES

MASK = "***"
WINDOW = 4096
"""Characters redacted from the start of a long text: more than the longest secret our
patterns find, so a secret that starts in the quoted part is whole in the window."""

_STOP = r"\s/\"'`<>\\,;()\[\]{}|=?#"
_PRIVATE_KEY = re.compile(
    r"(-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----)"
    r"(?s:.*?-----END [A-Z0-9 ]{0,60}-----|.*)"
)
_URL_USERINFO = re.compile(r"(?<=://)[^\s/?#\"'`<>\\@]++@(?:[^\s/?#\"'`<>\\@]*+@)*+")
"""`scheme://token@`, `scheme://user:password@` (a password may hold '@': up to the last one
of the authority, as urllib splits it)."""
_BARE_USERINFO = re.compile(
    rf"(?<![^{_STOP}])[^{_STOP}@:]*+:[^{_STOP}@]++@(?:[^{_STOP}@]*+@)*+(?=[A-Za-z0-9\[])"
)
"""`user:password@host` without a scheme (a Go module path, a pip or npm spec)."""
_QUERY = re.compile(r"([?&;][A-Za-z0-9_.-]{0,64}+=)([^&\s#\"'`<>]*+)")
_QUERY_SECRET = re.compile(
    r"(?i).*(?:token|key|secret|sig|signature|password|passwd|pwd|credential|auth|session|code)"
)
_PIP_INDEX = re.compile(
    r"(?i)((?<![\w-])(?:--(?:extra-)?index-url|--find-links|-i|-f)(?:[ \t]*+=[ \t]*+|[ \t]++))"
    r"([^\s\"'`]++)"
)
"""pip's index options: the URL may carry a token in its path (`https://host/<token>/simple`)."""


def _query(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}{MASK}" if _QUERY_SECRET.match(name) and match.group(2) else match.group(0)


def redact(text: str) -> str:
    """The text with every credential we recognise replaced by `***`; for a text longer than
    `WINDOW`, only its start is kept (and redacted)."""
    if len(text) > WINDOW:
        text = text[:WINDOW]
    text = _PRIVATE_KEY.sub(rf"\1{MASK}", text)
    for rule in TOKEN_RULES[1:]:
        text = rule.pattern.sub(functools.partial(_mask_group, group=rule.secret), text)
    text = _URL_USERINFO.sub(f"{MASK}@", text)
    text = _BARE_USERINFO.sub(f"{MASK}@", text)
    text = _PIP_INDEX.sub(rf"\1{MASK}", text)
    return _QUERY.sub(_query, text)


def _mask_group(match: re.Match[str], group: int | str) -> str:
    """The match with its secret group (or all of it) masked."""
    whole = match.group(0)
    start, end = match.start(group) - match.start(), match.end(group) - match.start()
    return f"{whole[:start]}{MASK}{whole[end:]}"
