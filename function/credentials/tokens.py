"""Credentials recognisable by their shape alone: keys and tokens with a fixed prefix, private
keys, kubeconfig client keys, passwords in connection strings.

Every pattern runs in one pass over the text, whatever it holds:
- it starts with a literal, so the re engine skips ahead to candidates fast;
- a token must start a word: checked by a fixed-width look-behind placed just after the
  literal (`_WORD_START`), so the literal prefix still drives the search and a run such as
  `eyJeyJeyJ…` is tried once, not once per `eyJ`;
- every repetition is bounded and possessive (`{m,n}+`): no backtracking inside a run.

`accept` runs in Python for a match only, in time bounded by the match.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .placeholders import is_placeholder


def _word_start(literal_length: int) -> str:
    """Look-behind, placed after a literal of that length: the literal starts a word."""
    return rf"(?<![A-Za-z0-9_].{{{literal_length}}})"


def _always(match: re.Match[str]) -> str | None:
    return ""


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _jwt(match: re.Match[str]) -> str | None:
    """A JWT whose header and payload are base64url JSON objects, the header naming `alg`;
    a Kubernetes service-account token when its claims say so. The cheap test (`"alg"` in
    the decoded header) comes before any JSON parsing."""
    header, payload = match.group(0).split(".")[:2]
    try:
        raw = _b64url(header)
        if b'"alg"' not in raw:
            return None
        parts = [json.loads(raw), json.loads(_b64url(payload))]
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not all(isinstance(p, dict) for p in parts) or "alg" not in parts[0]:
        return None
    claims = parts[1]
    if "kubernetes" in str(claims.get("iss", "")) or "kubernetes.io" in claims:
        return "Kubernetes service-account token"
    return "JSON Web Token"


def _connection_password(match: re.Match[str]) -> str | None:
    return None if is_placeholder(match.group("password")) else ""


@dataclass(frozen=True)
class TokenRule:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], str | None] = _always
    """The kind to report ("" for `kind`), or None when the match is no credential."""
    secret: int | str = 0
    """The group that is the secret itself: what redaction replaces."""


TOKEN_RULES = (
    TokenRule(
        "private key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[^-]|-(?!----)){0,300}?(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40}"
        ),
    ),
    TokenRule(
        "AWS access key id",
        re.compile(rf"(?:AKIA|ASIA|ABIA|ACCA){_word_start(4)}[A-Z0-9]{{16}}(?![A-Za-z0-9])"),
    ),
    TokenRule(
        "Google API key",
        re.compile(rf"AIza{_word_start(4)}[0-9A-Za-z_-]{{35}}(?![0-9A-Za-z_-])"),
    ),
    TokenRule(
        "GitHub token",
        re.compile(rf"gh[pousr]_{_word_start(4)}[A-Za-z0-9]{{36}}(?![A-Za-z0-9_])"),
    ),
    TokenRule(
        "GitHub token",
        re.compile(
            rf"github_pat_{_word_start(11)}[A-Za-z0-9]{{22}}_[A-Za-z0-9]{{59}}(?![A-Za-z0-9_])"
        ),
    ),
    TokenRule(
        "Slack token",
        re.compile(rf"xox[abposr]-{_word_start(5)}[0-9A-Za-z]{{8,32}}+-[0-9A-Za-z-]{{8,250}}+"),
    ),
    TokenRule(
        "Slack webhook URL",
        re.compile(
            r"hooks\.slack\.com/services/T[A-Z0-9]{6,16}+/B[A-Z0-9]{6,16}+/[A-Za-z0-9]{16,64}+"
        ),
    ),
    TokenRule(
        "JSON Web Token",
        re.compile(
            rf"eyJ{_word_start(3)}[A-Za-z0-9_-]{{8,2048}}+\.eyJ[A-Za-z0-9_-]{{8,8192}}+"
            r"\.[A-Za-z0-9_-]{16,1024}+"
        ),
        _jwt,
    ),
    TokenRule(
        "kubeconfig credentials",
        re.compile(
            r"client-key-data[\"']?[ \t]*+[:=][ \t]*+[\"']?(?P<value>[A-Za-z0-9+/]{40,65536}+)"
        ),
        secret="value",
    ),
    TokenRule(
        "AWS secret access key",
        re.compile(
            r"(?i:aws[_.-]?secret[_.-]?(?:access[_.-]?)?key)[\"']?[ \t]*+[:=]{1,2}[ \t]*+[\"']?"
            r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        secret="value",
    ),
    TokenRule(
        "password in a connection string",
        re.compile(r"://[^\s:/@\"'`,]{0,128}+:(?P<password>[^\s@/\"'`,]{1,256}+)@[A-Za-z0-9\[]"),
        _connection_password,
        secret="password",
    ),
)
"""Most specific first: when two rules find something on one line, the first names it."""
