"""Credentials in the untrusted source, found before anything is packed, and hidden from every
message that quotes request text.

Hand-written patterns (tokens.py: one per kind of key or token; assignments.py: a literal
assigned to a credential-like name, in code and in config syntaxes), not a library's:
detect-secrets 1.5.0 took 7.3 s on 900 KB of source against the 100 ms budget of the hash
stage, and runs its regexes line by line without a bound on the findings (bench/credentials.py,
docs/performance.md). A finding carries the file, the line and the kind, never the secret.

The work is linear in the input and the output bounded: every pattern runs in one pass (see
tokens.py), each rule stops after `RULE_CAP` matches in a file, line numbers come from one sweep
over the text, and a scan keeps the first `limit` findings (file and line order) and counts the
rest.

A known false positive is allowed by the marker `build-context: allow-secret` in a comment on
the same line (for a private key: on its BEGIN line).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import assignments
from .assignments import Syntax, syntax_of
from .placeholders import entropy
from .redaction import WINDOW, redact
from .tokens import TOKEN_RULES

__all__ = [
    "ALLOW_MARKER",
    "MAX_FINDINGS",
    "WINDOW",
    "Finding",
    "Scan",
    "Syntax",
    "entropy",
    "redact",
    "scan",
    "scan_text",
    "syntax_of",
]

ALLOW_MARKER = "build-context: allow-secret"
MAX_FINDINGS = 20
"""Findings a scan lists; the rest are counted."""
RULE_CAP = 1000
"""Matches one rule takes from one file; past it the rule stops and the count is a floor."""


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    kind: str


@dataclass(frozen=True)
class Scan:
    """The first findings (file and line order) and how many there are in all."""

    findings: tuple[Finding, ...] = ()
    total: int = 0
    complete: bool = True
    """False when a rule stopped at `RULE_CAP`: `total` is then a floor."""

    def __bool__(self) -> bool:
        return self.total > 0

    def __add__(self, other: Scan) -> Scan:
        limit = max(len(self.findings), len(other.findings), MAX_FINDINGS)
        return Scan(
            (self.findings + other.findings)[:limit],
            self.total + other.total,
            self.complete and other.complete,
        )

    @property
    def omitted(self) -> int:
        """Findings counted but not listed."""
        return self.total - len(self.findings)

    def count_text(self) -> str:
        """`3 findings`, `at least 1000 findings`."""
        floor = "" if self.complete else "at least "
        return f"{floor}{self.total} finding{'s' if self.total != 1 else ''}"


NOTHING = Scan()
"""No finding: nothing scanned, or nothing found."""


def _hits(text: str, syntax: Syntax) -> tuple[list[tuple[int, int, str]], bool]:
    """(position, rule order, kind) of every accepted match, and whether no rule was cut."""
    hits: list[tuple[int, int, str]] = []
    complete = True
    for order, rule in enumerate(TOKEN_RULES):
        taken = 0
        for match in rule.pattern.finditer(text):
            kind = rule.accept(match)
            if kind is None:
                continue
            hits.append((match.start(), order, kind or rule.kind))
            taken += 1
            if taken >= RULE_CAP:
                complete = False
                break
    found = assignments.find(text, assignments.fold(text), syntax)
    if len(found) > RULE_CAP:
        found, complete = found[:RULE_CAP], False
    order = len(TOKEN_RULES)
    hits += [(position, order, kind) for position, kind in found]
    return hits, complete


def _lines(text: str, hits: Iterable[tuple[int, int, str]]) -> dict[int, str]:
    """Line number -> kind, one per line (the most specific rule); a line holding the allow
    marker is left out. Newlines are counted between consecutive hits: one pass in all."""
    best: dict[int, tuple[int, int, str]] = {}
    line, previous = 1, 0
    for position, order, kind in sorted(hits):
        line += text.count("\n", previous, position)
        previous = position
        if line not in best or order < best[line][0]:
            best[line] = (order, position, kind)
    if ALLOW_MARKER in text:
        for number, (_, position, _) in list(best.items()):
            start = text.rfind("\n", 0, position) + 1
            end = text.find("\n", position)
            if ALLOW_MARKER in text[start : len(text) if end < 0 else end]:
                del best[number]
    return {number: kind for number, (_, _, kind) in best.items()}


def scan_text(path: str, text: str, syntax: Syntax | None = None) -> Scan:
    hits, complete = _hits(text, syntax or syntax_of(path))
    found = _lines(text, hits)
    findings = tuple(Finding(path, line, found[line]) for line in sorted(found))
    return Scan(findings[:MAX_FINDINGS], len(findings), complete)


def scan(files: Mapping[str, str], limit: int = MAX_FINDINGS) -> Scan:
    """Credentials in the files: the first `limit` in file and line order, and the count."""
    findings: list[Finding] = []
    total, complete = 0, True
    for path in sorted(files):
        result = scan_text(path, files[path])
        findings += result.findings[: max(0, limit - len(findings))]
        total += result.total
        complete = complete and result.complete
    return Scan(tuple(findings), total, complete)
