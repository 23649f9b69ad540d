"""Credentials in the untrusted source, found before anything is packed.

Hand-written patterns, one per kind, each anchored on a literal the re engine can search for
fast: detect-secrets 1.5.0 (the maintained library we measured) took 7.3 s on 900 KB of source,
73x the 100 ms budget of the hash stage; these take about 10 ms (bench/credentials.py,
docs/performance.md). A finding carries the file, the line and the kind, never the secret.

A known false positive is allowed by the marker `build-context: allow-secret` in a comment on
the same line (for a private key: on its BEGIN line).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

ALLOW_MARKER = "build-context: allow-secret"
_MAX_VALUE = 512
"""Longest literal examined by the entropy rule; longer ones are data, not a credential."""


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    kind: str


def _always(match: re.Match[str]) -> bool:
    return True


_WORD = re.compile(r"[A-Za-z0-9_]")


def _word_start(match: re.Match[str]) -> bool:
    """Not in the middle of a longer word. Checked here and not with `\\b` in the pattern: a
    pattern that starts with a literal is searched for by the re engine fast (0.3 ms for 900 KB
    against 15 ms with a leading `\\b`)."""
    start = match.start()
    return start == 0 or _WORD.match(match.string, start - 1) is None


def _jwt(match: re.Match[str]) -> bool:
    """A JWT whose header and payload are base64url JSON objects; checking both keeps a random
    `eyJ…` look-alike out."""
    if not _word_start(match):
        return False
    try:
        parts = [json.loads(_b64url(part)) for part in match.group(0).split(".")[:2]]
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return all(isinstance(p, dict) for p in parts) and "alg" in parts[0]


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _jwt_kind(match: re.Match[str]) -> str:
    payload = json.loads(_b64url(match.group(0).split(".")[1]))
    issuer = str(payload.get("iss", ""))
    if "kubernetes" in issuer or "kubernetes.io" in payload:
        return "Kubernetes service-account token"
    return "JSON Web Token"


_PLACEHOLDER = re.compile(
    r"(?i)[*x.•_-]+|\$\{?[\w.-]+\}?|%\(?\w*\)?s|\{\{?[^{}]*\}?\}|<[^<>]*>|\[[^\[\]]*\]"
    r"|(?:my)?(?:pass(?:word)?|secret|pwd|changeme|example|redacted|dummy|test|foo|bar)\d*"
)


def _connection_password(match: re.Match[str]) -> bool:
    return _PLACEHOLDER.fullmatch(match.group("password")) is None


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_ASSIGNED_TO = re.compile(r"(?P<name>[A-Za-z0-9_.-]{1,80})[\"']?[ \t]*(?::=|=>|[:=])[ \t]*\Z")
_SECRET_NAME = re.compile(
    r"(?i).*(?:secret|token|passw(?:or)?d|pwd|api_?key|apikey|access_?key|private_?key"
    r"|credentials?|auth).*"
)
_NOT_SECRET_NAME = re.compile(
    r"(?i).*(?:hash|digest|sha\d*|md5|checksum|fingerprint|_id|uuid|name|file|path|url|uri"
    r"|env|var|header|type|kind|field|key_?id)"
)


def _high_entropy(match: re.Match[str]) -> bool:
    """A random-looking literal assigned to a credential-like name (`api_key = "…"`,
    `"password": "…"`). Hashes (hex) and UUIDs are not credentials here, nor are values of
    names that say what they are (`token_hash`, `secret_name`). The literal is found first
    (fast: it starts with a quote) and its name is read back from the same line."""
    value = match.group("value")
    text = match.string
    start = match.start()
    line_start = max(text.rfind("\n", 0, start) + 1, start - 120)
    assigned = _ASSIGNED_TO.search(text, line_start, start)
    if assigned is None:
        return False
    name = assigned.group("name")
    if not _SECRET_NAME.fullmatch(name) or _NOT_SECRET_NAME.fullmatch(name):
        return False
    if _PLACEHOLDER.fullmatch(value) or _HEX.fullmatch(value) or _UUID.fullmatch(value):
        return False
    classes = sum(any(test(c) for c in value) for test in (str.islower, str.isupper, str.isdigit))
    return classes >= 2 and entropy(value) >= 3.5


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] = _always
    describe: Callable[[re.Match[str]], str] | None = None


# Every pattern starts with a literal (or a quote) so that the re engine can skip ahead fast.
_RULES = (
    _Rule(
        "private key",
        re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
    ),
    _Rule(
        "AWS access key id",
        re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        _word_start,
    ),
    _Rule(
        "AWS secret access key",
        re.compile(
            r"(?i:aws_?secret_?(?:access_?)?key)[\"']?\s*[:=]{1,2}\s*[\"']?"
            r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
        ),
    ),
    _Rule("Google API key", re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), _word_start),
    _Rule(
        "GitHub token",
        re.compile(
            r"(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
            r"(?![A-Za-z0-9_])"
        ),
        _word_start,
    ),
    _Rule(
        "Slack token", re.compile(r"xox[abposr]-[0-9A-Za-z]{8,}-[0-9A-Za-z-]{8,250}"), _word_start
    ),
    _Rule(
        "Slack webhook URL",
        re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"),
    ),
    _Rule(
        "JSON Web Token",
        re.compile(r"eyJ[A-Za-z0-9_-]{8,4096}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{16,1024}"),
        _jwt,
        _jwt_kind,
    ),
    _Rule(
        "kubeconfig credentials",
        re.compile(r"client-key-data:[ \t]*[\"']?[A-Za-z0-9+/]{40,}"),
    ),
    _Rule(
        "password in a connection string",
        re.compile(r"://[^\s:/@\"'`]{0,128}:(?P<password>[^\s@/\"'`]{1,256})@[A-Za-z0-9\[]"),
        _connection_password,
    ),
    _Rule(
        "high-entropy secret assignment",
        re.compile(rf"[\"'`](?P<value>[^\"'`\s]{{16,{_MAX_VALUE}}})[\"'`]"),
        _high_entropy,
    ),
)


def scan_text(path: str, text: str) -> Iterator[Finding]:
    """One finding per line: the most specific rule (first in `_RULES`) names the kind."""
    lines: set[int] = set()
    for rule in _RULES:
        for match in rule.pattern.finditer(text):
            if not rule.accept(match):
                continue
            start = match.start()
            line = text.count("\n", 0, start) + 1
            if line in lines:
                continue
            end = text.find("\n", start)
            if ALLOW_MARKER in text[text.rfind("\n", 0, start) + 1 : len(text) if end < 0 else end]:
                continue
            lines.add(line)
            yield Finding(path, line, rule.describe(match) if rule.describe else rule.kind)


def scan(files: Mapping[str, str]) -> list[Finding]:
    """Every credential in the files, in file and line order."""
    return sorted(f for path, text in files.items() for f in scan_text(path, text))
