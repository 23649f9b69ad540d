"""Values that stand for a credential without being one: placeholders, references to where
the real value lives, and names of things.

Each test runs on one value of at most a few hundred characters (the scanner bounds it)."""

from __future__ import annotations

import math
import re
from collections import Counter

_PLACEHOLDER = re.compile(
    r"(?i)[*x.•_#-]+|\$\{?[\w.:-]+\}?|%\(?\w*\)?[sd]|\{\{?[^{}]*\}?\}|<[^<>]*>|\[[^\[\]]*\]"
    r"|(?:my|your|the|some|a|an|new|old|default|sample|example|fake|dummy|test)?[-_]?"
    r"(?:pass(?:word|wd)?|secret|pwd|token|key|api[-_]?key|changeme|change[-_]?me|example"
    r"|redacted|removed|hidden|dummy|test(?:ing)?|foo|bar|baz|fake|sample|placeholder|none"
    r"|null|nil|undefined|true|false|yes|no|on|off|todo|fixme|replace[-_]?me|xxx+|abc"
    r"|default|empty|unset|required|optional|string|str)"
    r"(?:[-_]?(?:here|value|goes[-_]?here))?\d*"
)
"""Words and template syntaxes that hold the place of a credential: `${DB_PASSWORD}`, `<token>`,
`{{ .Values.password }}`, `%(password)s`, `****`, `changeme`, `your-api-key-here`."""

_REFERENCE = re.compile(
    r"(?i)(?:\$|%|\{|<|!|@|&|\*|/|\./|\.\./|~/|[a-z]:\\|ENC\[|vault:|env:|file:|secret:|ssm:"
    r"|arn:|sm://|op://|k8s://|azure-keyvault://|gcp-secretmanager://|projects/[^/]+/secrets/"
    r"|secretsmanager:|keyvault:|kms:|process\.env|os\.environ|os\.getenv|getenv|env\[)"
)
"""How a value says where the credential lives instead of being it: a variable (`$X`, `%X%`),
a template (`{{…}}`), a YAML tag (`!Ref`, `!vault`), a path (`/run/secrets/db`), an ARN or a
secret-manager reference (`arn:aws:secretsmanager:…`, `projects/p/secrets/s`, `op://…`)."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,20}://[^\s@]*")
"""A URL without userinfo: an endpoint, not a credential (userinfo is the connection-string
rule's)."""
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/,@ -]*")
_SEPARATOR = re.compile(r"[_.:/,@ -]")
_WORD = re.compile(r"[A-Za-z]+[0-9]{0,4}|[0-9]{1,4}")
_HUMP = re.compile(r"[A-Z]{2,}(?![a-z])|[A-Z]?[a-z]+|[A-Z]|[0-9]+")
_BRACKETS = re.compile(r"[()\[\]{}<>]")


def is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.fullmatch(value) is not None


def is_reference(value: str) -> bool:
    """A placeholder, a reference to a store of secrets, a path, a URL without credentials, a
    UUID or an expression (brackets: a call, a type, a template): not a credential whatever
    name it is assigned to."""
    return (
        not value
        or is_placeholder(value)
        or _REFERENCE.match(value) is not None
        or _URL.fullmatch(value) is not None
        or _UUID.fullmatch(value) is not None
        or _BRACKETS.search(value) is not None
    )


def is_name_of_a_thing(value: str) -> bool:
    """A resource, constant or header name: words joined by separators, each a word with
    perhaps a number after it (`payments-db-credentials-v2`, `TR31_K0_KEY_ENCRYPTION_KEY`,
    `Access-Control-Allow-Credentials`), or words joined by case, of 3 characters and more
    on average, none of
    one letter, digits only at the end (`SSOProviderInvalidToken`, `encryptionKey1024`). A
    generated secret changes case or class every one or two characters, and mixes digits into
    its letters."""
    if _NAME_CHARS.fullmatch(value) is None:
        return False
    if _SEPARATOR.search(value) is not None:
        return all(_WORD.fullmatch(part) for part in _SEPARATOR.split(value) if part)
    if value == value.lower() or value == value.upper() or not _WORD.fullmatch(value):
        return False
    humps = _HUMP.findall(value)
    return min(len(h) for h in humps) >= 2 and sum(map(len, humps)) / len(humps) >= 3


def is_hex(value: str) -> bool:
    return _HEX.fullmatch(value) is not None


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in counts.values())


def looks_random(value: str, minimum: int = 16) -> bool:
    """Long enough, of at least two of lower case, upper case and digits, and of high
    entropy: what a generated key or token looks like."""
    # 3.5 bits need 12 distinct characters: the cheap tests first
    if len(value) < minimum or len(set(value)) < 12 or classes(value) < 2:
        return False
    return not is_hex(value) and not is_name_of_a_thing(value) and entropy(value) >= 3.5


_DIGIT = re.compile(r"[0-9]")
_SYMBOL = re.compile(r"[^A-Za-z0-9]")


def classes(value: str, symbols: bool = False) -> int:
    """How many of lower case, upper case, digits (and, with `symbols`, other characters)
    the value mixes."""
    found = (value != value.upper()) + (value != value.lower()) + bool(_DIGIT.search(value))
    return found + bool(symbols and _SYMBOL.search(value))
