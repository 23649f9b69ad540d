"""Syntax checks for languages we do not run in-process: tree-sitter grammars, parsed within
budgets by the syntax checker process (function/syntax_checker.py), the verdicts worded here."""

from __future__ import annotations

from collections.abc import Mapping

from .. import syntax_checker, syntax_parse
from ..errors import FieldError
from ..syntax_parse import MAX_DEPTH, Outcome


class TreeSitterGrammar:
    def __init__(self, language: str, name: str) -> None:
        self.language = language
        """The grammar's key in syntax_parse.GRAMMARS."""
        self.name = name

    def check(
        self, sources: Mapping[str, str], entry: str | None = None
    ) -> list[tuple[str, Outcome]]:
        """Each source's Outcome, checked together in one child process."""
        files = [(path, text.encode("utf-8")) for path, text in sources.items()]
        return list(zip(sources, syntax_checker.check(self.language, files, entry), strict=True))

    def first_errors(self, sources: Mapping[str, str]) -> list[FieldError]:
        return [e for path, outcome in self.check(sources) for e in self.errors(path, outcome)]

    def errors(self, path: str, outcome: Outcome) -> list[FieldError]:
        """The refusal an Outcome means (none for "ok")."""
        if outcome.verdict == "ok":
            return []
        if outcome.verdict == "deep":
            return [too_deep(path, self.name)]
        if outcome.verdict == "syntax":
            return [
                FieldError(
                    f"{self.name} syntax error: {outcome.what} at line {outcome.line}, column "
                    f"{outcome.column}; fix the source so that it parses",
                    file=path,
                    line=outcome.line,
                    column=outcome.column,
                )
            ]
        return [FieldError(f"{self.name}: {too_complex(outcome)}", file=path)]


def too_complex(outcome: Outcome) -> str:
    """Why a parse was stopped, the limit it reached, and what to do."""
    if outcome.verdict == "steps":
        limit = (outcome.steps - 1) * syntax_parse.STEPS_PER_REPORT
        what = (
            f"the parser stopped at {limit:,} steps (the limit is "
            f"{syntax_parse.STEPS_BASE:,} + {syntax_parse.STEPS_PER_KIB:,} per KiB of source)"
        )
    elif outcome.verdict == "cpu":
        what = (
            "the parser used up its CPU time (the limit for a request is "
            f"{syntax_parse.CPU_BASE_SECONDS:g} s + {syntax_parse.CPU_FILE_SECONDS * 1000:g} ms "
            f"a file + {syntax_parse.CPU_SECONDS_PER_KIB * 1000:g} ms per KiB of source)"
        )
    else:
        what = (
            "the parser ran out of memory (the limit is "
            f"{syntax_parse.MEMORY_BASE // syntax_parse.MIB} MiB + "
            f"{syntax_parse.MEMORY_PER_BYTE} bytes per byte of source)"
        )
    return (
        f"too complex to check: {what}. Long runs of syntax errors make its error recovery "
        "explode: fix the first syntax errors, or split the file"
    )


def too_deep(path: str, language: str) -> FieldError:
    """The caller's source exhausted a parser's stack or memory: their input, not our bug."""
    return FieldError(
        f"{language}: the source nests too deeply to parse (more than {MAX_DEPTH} levels of "
        "brackets, blocks or operators); split the expression into statements",
        file=path,
        line=1,
        column=1,
    )
