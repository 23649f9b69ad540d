"""Python's syntax check: CPython's own compiler for the serving minor (and its parser for
older minors), tree-sitter for newer ones; with the cost of CPython's f-string handling
bounded first."""

from __future__ import annotations

import ast
import io
import itertools
import operator
import sys
import tokenize
from collections.abc import Mapping

from ..boundary import quote
from ..errors import FieldError
from .treesitter import TreeSitterGrammar, too_deep

_GRAMMAR = TreeSitterGrammar("python", "Python")


def source_errors(sources: Mapping[str, str], version: str) -> list[FieldError]:
    """Compile to bytecode (never run): 5x faster than building an AST, and it reports what
    py_compile would, such as 'return' outside a function. The UTF-8 bytes are compiled, as
    CPython reads the stored file: a BOM is allowed, a coding cookie is honoured (and must
    say UTF-8, since that is how the file is stored). compile() ignores the grammar
    version, so an older version is also parsed with its own grammar (ast, slower, only
    for those requests) and checked for 3.12 f-strings (PEP 701), which ast accepts. A
    version newer than the serving interpreter is checked with the tree-sitter grammar,
    which knows newer syntax: more lenient, but it never refuses valid code. Only the
    serving minor is exact: `check_is_exact` says so, and the reply warns otherwise."""
    minor = int(version.split(".")[1])
    errors: dict[str, list[FieldError]] = {}
    newer: dict[str, str] = {}
    for path, text in sources.items():
        source = text.encode("utf-8")
        problem = _encoding_problem(path, source)
        if problem:
            errors[path] = [problem]
        elif minor > sys.version_info[1]:
            newer[path] = text
        else:
            errors[path] = _compile_errors(path, source, text, version)
    for path, outcome in _GRAMMAR.check(newer):
        errors[path] = _GRAMMAR.errors(path, outcome)
    return [error for path in sources for error in errors.get(path, [])]


def _compile_errors(path: str, source: bytes, text: str, version: str) -> list[FieldError]:
    problem = _fstring_cost_problem(path, source, text, version)
    if problem:
        return [problem]
    minor = int(version.split(".")[1])
    try:
        compile(source, path, "exec", dont_inherit=True)
        if minor < sys.version_info[1]:
            ast.parse(source, path, feature_version=(3, minor))
            if minor < 12:
                problem = _pep701_problem(path, text, version)
                if problem:
                    return [problem]
    except SyntaxError as exc:
        line, column = exc.lineno or 1, exc.offset or 1
        return [
            FieldError(
                f"Python {version} syntax error: {exc.msg} at line {line}, column {column}; "
                "fix the source so that it compiles",
                file=path,
                line=line,
                column=column,
            )
        ]
    except (RecursionError, MemoryError):
        return [too_deep(path, f"Python {version}")]
    return []


FSTRING_COPIES = 4096
"""At each replacement field of an f-string, CPython's tokenizer copies the rest of its input
buffer (kept for `f"{x=}"`): compile() of a string, whose buffer is the whole file, costs the
sum over the fields of the bytes after each. 1 MiB of `f"{x}"` lines took 5 s; python reading
the file from disk copies the rest of a line only. That sum is bounded to 4,096 times the
file's size (0.4 s per MiB more at most); real code stays below 700 counting every `{`
(`python -m bench.syntax_budget`)."""


def _fstring_cost_problem(path: str, source: bytes, text: str, version: str) -> FieldError | None:
    copies, fields = fstring_copies(source, text)
    if copies <= FSTRING_COPIES * len(source):
        return None
    return FieldError(
        f"Python {version}: too complex to check: "
        + (f"{fields:,} f-string replacement fields" if fields else "f-strings")
        + f" in a file of {len(source):,} bytes; CPython's check copies the rest of the file at "
        f"each field, and the limit is {FSTRING_COPIES:,} times the file's size: split the file "
        "or build long text with str.join or format()",
        file=path,
    )


def fstring_copies(source: bytes, text: str) -> tuple[int, int]:
    """A bound on the bytes compile() will copy at f-string fields, and the fields counted (0:
    every `{` counted). Every `{` first (dicts and sets too: cheap, and enough for real
    code); if that is over the bound, the `{` tokens inside f-strings, as the tokenizer module
    finds them, unless its own copies (to the end of the line) would be over the bound too."""
    budget = FSTRING_COPIES * len(source)
    every = _copied(source)
    if every <= budget or sum(_copied(line) for line in source.split(b"\n")) > budget:
        return every, 0
    return _copied_by_fields(text, len(source))


def _copied(data: bytes) -> int:
    """The sum, over every `{` in `data`, of the bytes from it to the end: for the parts
    between braces, part i is after i braces (linear, in C)."""
    parts = data.split(b"{")
    braces = len(parts) - 1
    weighted: int = sum(map(operator.mul, itertools.count(), map(len, parts)))
    return weighted + braces * (braces + 1) // 2


def _copied_by_fields(text: str, size: int) -> tuple[int, int]:
    """(bytes copied, fields): over every `{` token inside an f-string (replacement fields,
    nested ones, and any dict or set in them: an upper bound). Positions are characters, at
    most the bytes before them. A source the tokenizer refuses counts as over the bound."""
    starts = [0, *itertools.accumulate(len(line) for line in io.StringIO(text))]
    copied = fields = depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in _TEMPLATE_STARTS:
                depth += 1
            elif token.type in _TEMPLATE_ENDS:
                depth -= 1
            elif depth and token.type == tokenize.OP and token.string == "{":
                fields += 1
                copied += size - starts[token.start[0] - 1] - token.start[1]
    except (tokenize.TokenError, SyntaxError, IndexError, RecursionError, MemoryError):
        return sys.maxsize, fields
    return copied, fields


def _encoding_problem(path: str, source: bytes) -> FieldError | None:
    """A coding cookie CPython does not know, or one other than UTF-8 (the stored encoding)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError as exc:
        message = str(exc.msg if hasattr(exc, "msg") else exc)
        return FieldError(
            f"Python cannot read the file: {quote(message, 120)}; remove the coding "
            "declaration or write '# -*- coding: utf-8 -*-'",
            file=path,
            line=1,
            column=1,
        )
    if encoding not in ("utf-8", "utf-8-sig"):
        return FieldError(
            f"the file declares the coding {quote(encoding)}, but it is stored as UTF-8: "
            "remove the coding declaration or write '# -*- coding: utf-8 -*-'",
            file=path,
            line=1,
            column=1,
        )
    return None


# Token types of the 3.12+ tokenizer (the serving interpreter); -1 never matches.
_FSTRING_START: int = getattr(tokenize, "FSTRING_START", -1)
_FSTRING_MIDDLE: int = getattr(tokenize, "FSTRING_MIDDLE", -1)
_FSTRING_END: int = getattr(tokenize, "FSTRING_END", -1)
# 3.14's template strings (t"...") have replacement fields too
_TEMPLATE_STARTS = {_FSTRING_START, getattr(tokenize, "TSTRING_START", -1)}
_TEMPLATE_ENDS = {_FSTRING_END, getattr(tokenize, "TSTRING_END", -1)}


def _pep701_problem(path: str, text: str, version: str) -> FieldError | None:
    """An f-string that only Python 3.12+ reads (PEP 701): the f-string's own quote inside a
    replacement field, a backslash or a comment in one. The serving tokenizer (3.12+) splits
    f-strings into parts, which shows the replacement fields."""
    stack: list[str] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, RecursionError, MemoryError):
        return None
    for token in tokens:
        if token.type == _FSTRING_START:
            if stack and _clash(_quote_of(token.string), stack[-1]):
                return _pep701(path, token.start, version, "reuses the enclosing f-string's quotes")
            stack.append(_quote_of(token.string))
        elif token.type == _FSTRING_END:
            if stack:
                stack.pop()
        elif stack and (what := _inside_field(token, stack[-1])):
            return _pep701(path, token.start, version, what)
    return None


def _inside_field(token: tokenize.TokenInfo, quote: str) -> str | None:
    """What a token inside a replacement field has that only 3.12+ reads (None: nothing)."""
    if token.type == _FSTRING_MIDDLE:
        return None
    if token.type == tokenize.STRING and _clash(_quote_of(token.string), quote):
        return "reuses the f-string's quotes"
    if token.type == tokenize.COMMENT:
        return "has a comment"
    if "\\" in token.string:
        return "has a backslash"
    return None


def _quote_of(token: str) -> str:
    body = token.lstrip("rRbBfFuUtT")
    return body[:3] if body[:3] in ('"""', "'''") else body[:1]


def _clash(inner: str, outer: str) -> bool:
    """Before 3.12, a string inside a replacement field ended the f-string at its quote."""
    return inner[0] == outer[0] and len(inner) >= len(outer)


def _pep701(path: str, start: tuple[int, int], version: str, what: str) -> FieldError:
    line, column = start[0], start[1] + 1
    return FieldError(
        f"Python {version} syntax error: an f-string replacement field {what} at line {line}, "
        f"column {column}; Python before 3.12 cannot read it: use other quotes or a variable, "
        "or ask for runtimeVersion 3.12 or later",
        file=path,
        line=line,
        column=column,
    )
