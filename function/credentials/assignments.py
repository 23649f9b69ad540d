"""A literal value assigned to a credential-like name, in code and in config files.

Code (`api_key = "…"`, `clientSecret: '…'`, `password := "…"`): only quoted literals count,
and only when they look generated (long, mixed, high entropy) or, for a password, when they
are no placeholder or name of a thing: code that reads a secret at run time names where it
lives (`SecretId='arn:aws:secretsmanager:…'`, `TOKEN_ENDPOINT = 'https://…'`,
`CREDENTIALS_SECRET = 'payments-db-credentials-v2'`) and passes.

Config files (YAML, env files, INI, TOML, JSON, .properties, and any file that is not code):
unquoted values too (`password: …`, `DB_PASSWORD=…`, `db.password = …`), when the value ends
the line. A password there is any value that is no placeholder or reference (`${DB_PASSWORD}`,
`!vault`, `/run/secrets/db`).

The search runs on an ASCII-folded, lower-cased copy of the text (one code point, one byte, so
positions agree) and starts at a fixed keyword, so the engine skips ahead fast; the rest of the
name and the separator are bounded and possessive.
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal

from .placeholders import classes, is_hex, is_name_of_a_thing, is_reference, looks_random

Syntax = Literal["code", "config"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


CODE_SUFFIXES = _words(
    ".py .pyi .pyw .js .mjs .cjs .jsx .ts .mts .cts .tsx .go .java .kt .kts .scala .rb .php .cs "
    ".c .h .cc .cpp .hpp .rs .swift .m .lua .pl .pm .r .dart .ex .exs .erl .hs .clj .groovy "
    ".vue .svelte"
)
"""Files read as code. Every other file (YAML, env, INI, TOML, JSON, .properties, shell, text)
is read as configuration, where an unquoted value counts too."""

_VALUE_MAX = 512
"""Longest value examined; a longer one is data, not a credential."""
_KEYWORDS = rb"pass|pwd|secret|token|key|cred|auth|bearer"
_SEPARATOR = rb"[\"']?[ \t]*+(?::=|=>|[:=])[ \t]*+"
_QUOTED = rb"(?P<quote>[\"'`])(?P<quoted>[^\"'`\s\\]{1,%d}+)(?P=quote)" % _VALUE_MAX
_BARE = rb"(?P<bare>[^\s\"'`#;,=]{1,%d}+={0,3})(?=[ \t]*+(?:[#;]|\r?\n|\Z))" % _VALUE_MAX
"""An unquoted value ending the line (or before a comment); '=' only as base64 padding, so
that a run of `key=key=…` is not read again from every `key`."""
_TAIL = rb"(?P<tail>(?:" + _KEYWORDS + rb")[a-z0-9_.-]{0,40}+)" + _SEPARATOR
_PATTERNS: dict[Syntax, re.Pattern[bytes]] = {
    "code": re.compile(_TAIL + _QUOTED),
    "config": re.compile(_TAIL + rb"(?:" + _QUOTED + rb"|" + _BARE + rb")"),
}
_NAME_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789_.-"
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

_PASSWORD_NAME = re.compile(r"password|passwd|passphrase|pwd|(?<![a-z])pass(?![a-z])")
"""In any word of the name: `DB_PASSWORD`, `dbPasswd`, `db_pass`, not `bypass`, `passthrough`."""
_SECRET_NAME = re.compile(
    r"secret|token|api_?key|credential|creds|(?<![a-z])auth(?![a-z])|authorization|bearer"
    r"|(?:access|private|signing|encryption|client|master|app|account|consumer|service|session)"
    r"_?key"
)
"""Checked on the name's words joined by '_' (`clientSecret` -> `client_secret`)."""
_DESCRIBES = _words(
    """id ids uuid name names file files path paths dir url uri urls endpoint host hosts env var
    vars variable header headers type types kind field fields hash hashed digest sha sha1 sha256
    md5 checksum fingerprint arn region ref refs reference length len size count max min prefix
    suffix pattern regex re format fmt mode scheme enabled required policy label prompt
    placeholder hint message msg error errors description desc help class cls handler provider
    location expiry expires expiration ttl timeout version template option options param params
    parameter input output index idx store storage manager method algorithm alg attr attribute
    attributes location lookup source src getter setter loader reader key_id keyid usage flow
    grant scope scopes audience issuer cache validator validation regexp policy rule rules"""
)
"""Last words of a name that say what the value is about (`token_hash`, `SecretId`,
`TOKEN_ENDPOINT`, `password_file`): the value is not the credential."""


def syntax_of(path: str) -> Syntax:
    return "code" if posixpath.splitext(path)[1].lower() in CODE_SUFFIXES else "config"


def fold(text: str) -> bytes:
    """Lower-cased ASCII, one byte per code point (anything else becomes '?')."""
    return text.encode("ascii", "replace").lower()


def name_kind(name: str) -> Literal["password", "secret"] | None:
    words = _WORDS.findall(name)
    if not words or words[-1].lower() in _DESCRIBES:
        return None
    joined = "_".join(words).lower()
    if _PASSWORD_NAME.search(joined):
        return "password"
    return "secret" if _SECRET_NAME.search(joined) else None


def judge(name: str, value: str, quoted: bool, syntax: Syntax) -> str | None:
    """The kind of credential `name = value` is, or None."""
    kind = name_kind(name)
    if kind is None:
        return None
    verdict = _verdict(kind, value, quoted, syntax)
    return None if verdict is None or is_reference(value) else verdict


def _verdict(
    kind: Literal["password", "secret"], value: str, quoted: bool, syntax: Syntax
) -> str | None:
    if looks_random(value):
        return "high-entropy secret assignment"
    if syntax == "config":
        return _config_verdict(kind, value)
    if kind == "password" and quoted and len(value) >= 8 and not is_name_of_a_thing(value):
        return "password assignment" if classes(value, symbols=True) >= 3 else None
    return None


def _config_verdict(kind: Literal["password", "secret"], value: str) -> str | None:
    """A configuration file's value is the value itself, quoted or not: a password from 4
    characters on, and a long hex string under any secret's name."""
    if kind == "password" and len(value) >= 4:
        return "password assignment"
    if is_hex(value) and len(value) >= 32:
        return "high-entropy secret assignment"
    return None


def find(text: str, folded: bytes, syntax: Syntax) -> list[tuple[int, str]]:
    """(position, kind) of each assignment of a credential in the text."""
    found = []
    for match in _PATTERNS[syntax].finditer(folded):
        start = match.start("tail")
        # the rest of the name before the keyword (`DB_` of `DB_PASSWORD`), at most 40 chars
        before = folded[max(0, start - 40) : start]
        name_start = start - (len(before) - len(before.rstrip(_NAME_CHARS)))
        name = text[name_start : match.end("tail")]
        quoted = match.group("quoted") is not None
        group = "quoted" if quoted else "bare"
        value = text[match.start(group) : match.end(group)]
        kind = judge(name, value, quoted, syntax)
        if kind is not None:
            found.append((name_start, kind))
    return found
