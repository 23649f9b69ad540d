"""Tree-sitter parses within budgets of parse steps and CPU time, and what they find: the first
syntax error, a tree too deep, or (Go) the entry file's package. They run in the syntax checker
process (function/syntax_checker.py, which says why and adds the memory limit); this module
imports only the standard library and the grammars, so that the checker stays small.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tree_sitter_go
import tree_sitter_javascript
import tree_sitter_python
from tree_sitter import Language, Node, Parser

GRAMMARS: dict[str, Any] = {
    "javascript": tree_sitter_javascript,
    "go": tree_sitter_go,
    "python": tree_sitter_python,
}
KIB = 1024
MIB = 1024 * KIB

STEPS_PER_REPORT = 100
"""tree-sitter 0.26 calls the progress callback once every 100 parse operations (a token
shifted, a rule reduced, a recovery step): counting the calls counts the steps, the same on
every machine."""
STEPS_PER_KIB = 25_600
STEPS_BASE = 100_000
"""Steps a file may take: 100,000 plus 25,600 per KiB. Real code takes at most 2,400 per KiB
and valid code at most 7,200 (a file of `;`); `python -m bench.syntax_budget` prints the
highest ratio over every .js and .go file on the machine."""
CPU_BASE_SECONDS = 0.25
CPU_FILE_SECONDS = 0.01
CPU_SECONDS_PER_KIB = 0.001
"""CPU time the files of one check may take together: 0.25 s, plus 10 ms a file and 1 ms per
KiB. Real code takes 0.1 ms per KiB (at most 0.45 on a busy machine). This budget depends on
the machine, unlike the others; it is what bounds work at a normal count of steps."""
MEMORY_BASE = 64 * MIB
MEMORY_PER_BYTE = 256
"""Address space a parse may add: 64 MiB plus 256 bytes per byte of source. Trees of real
code take at most 80 bytes per byte of source (110 of address space, minified code)."""
CLOCK_EVERY = 16
"""Progress reports between two reads of the clock (a read at every one costs 7% of a parse)."""
CHUNK_BYTES = 16 * 1024
"""The parser reads the source through a callback (the only form that takes a progress
callback), in chunks of this size."""
MAX_DEPTH = 500
"""Deepest syntax tree accepted. The consumers' parsers recurse: node 20-24 overflows its stack
on 2,000 nested parentheses or blocks (1,000 pass), CPython refuses 200 nested brackets, and
real programs stay below 100 levels."""

Verdict = Literal["ok", "syntax", "deep", "steps", "cpu", "memory"]
VERDICTS: tuple[Verdict, ...] = typing.get_args(Verdict)


@dataclass(frozen=True)
class Outcome:
    """What the check found in one file. `steps` counts the parse steps taken (in
    STEPS_PER_REPORT units, so a budget ratio is exact); `package` is, for the entry file of a
    Go check, the package name and the line of its clause (None: no clause), with `has_main`."""

    verdict: Verdict
    line: int = 1
    column: int = 1
    what: str = ""
    steps: int = 0
    package: tuple[str, int] | None = None
    has_main: bool = False
    es_module: bool = False
    """Whether the file has an import or export statement at its top level (JavaScript)."""


def step_budget(size: int) -> int:
    """Progress reports a source of `size` bytes may take."""
    return (STEPS_BASE + STEPS_PER_KIB * size // KIB) // STEPS_PER_REPORT


def cpu_budget(sizes: Sequence[int]) -> float:
    """CPU seconds a check of files of these sizes may take together."""
    return CPU_BASE_SECONDS + sum(CPU_FILE_SECONDS + CPU_SECONDS_PER_KIB * s / KIB for s in sizes)


def memory_budget(size: int) -> int:
    return MEMORY_BASE + MEMORY_PER_BYTE * size


class _Cancelled(Exception):
    def __init__(self, verdict: Verdict, steps: int) -> None:
        self.verdict, self.steps = verdict, steps


def parse(parser: Parser, source: bytes, cpu_deadline: float = math.inf) -> tuple[Node, int]:
    """The root of `source`'s tree and the progress reports it took; _Cancelled when the
    step budget or the CPU deadline (process time) is passed. Node text must be sliced from
    `source`: `Node.text` of a tree read through a callback calls the callback again."""
    budget = step_budget(len(source))
    reports = 0
    stopped: Verdict | None = None

    def progress(offset: int, has_error: bool) -> bool:
        nonlocal reports, stopped
        reports += 1
        if reports > budget:
            stopped = "steps"
        elif reports % CLOCK_EVERY == 0 and time.process_time() > cpu_deadline:
            stopped = "cpu"
        return stopped is not None

    try:
        tree = parser.parse(
            lambda offset, _point: source[offset : offset + CHUNK_BYTES], progress_callback=progress
        )
    except ValueError:
        # a cancelled parse is kept to be resumed by the next one: drop it
        parser.reset()
        if stopped is None:
            raise
        raise _Cancelled(stopped, reports) from None
    return tree.root_node, reports


def inspect(
    parser: Parser, source: bytes, *, entry: bool = False, cpu_deadline: float = math.inf
) -> Outcome:
    """The verdict on one file: its first syntax error (the earliest ERROR or MISSING node),
    and for a Go entry file what `package main` + `func main()` needs."""
    try:
        root, steps = parse(parser, source, cpu_deadline)
    except _Cancelled as cancelled:
        return Outcome(cancelled.verdict, steps=cancelled.steps)
    if deeper_than(root, MAX_DEPTH):
        return Outcome("deep", steps=steps)
    if root.has_error:
        return _first_error(root, source, steps)
    es_module = any(c.type in ("import_statement", "export_statement") for c in root.children)
    if not entry:
        return Outcome("ok", steps=steps, es_module=es_module)
    package, has_main = _go_entry(root, source)
    return Outcome("ok", steps=steps, package=package, has_main=has_main, es_module=es_module)


def _go_entry(root: Node, source: bytes) -> tuple[tuple[str, int] | None, bool]:
    """A Go entry file's package clause (its name and line; None: no clause), and whether it
    declares `func main()`."""
    clause = next((c for c in root.children if c.type == "package_clause"), None)
    package = None
    if clause is not None:
        name = clause.named_children[0] if clause.named_children else None
        package = (_text(source, name) if name is not None else "", clause.start_point[0] + 1)
    has_main = any(
        c.type == "function_declaration"
        and (node := c.child_by_field_name("name")) is not None
        and source[node.start_byte : node.end_byte] == b"main"
        for c in root.children
    )
    return package, has_main


def _text(source: bytes, node: Node) -> str:
    return source[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _first_error(root: Node, source: bytes, steps: int) -> Outcome:
    node = _first_broken(root)
    line, byte_col = node.start_point
    line_start = source.rfind(b"\n", 0, node.start_byte) + 1
    column = len(source[line_start : line_start + byte_col].decode("utf-8", "replace")) + 1
    if node.is_missing:
        what = f"missing {node.type!r}"
    else:
        snippet = _text(source, node).strip().splitlines()
        what = f"unexpected {snippet[0][:40]!r}" if snippet and snippet[0] else "unexpected input"
    return Outcome("syntax", line + 1, column, what, steps)


def deeper_than(root: Node, limit: int) -> bool:
    """Whether the tree has a node more than `limit` levels below the root. Subtrees with too
    few nodes to reach the limit are skipped whole (descendant_count is O(1)), so a normal
    source costs a few dozen steps; a pathological one at most one walk of its nodes."""
    cursor = root.walk()
    depth = 0
    while True:
        node = cursor.node
        if node is not None and depth + node.descendant_count > limit and cursor.goto_first_child():
            depth += 1
            if depth > limit:
                return True
            continue
        while not cursor.goto_next_sibling():
            if depth == 0 or not cursor.goto_parent():
                return False
            depth -= 1


def _first_broken(root: Node) -> Node:
    """The earliest ERROR or MISSING node in document order."""
    node = root
    while True:
        for child in node.children:
            if child.is_error or child.is_missing:
                return child
            if child.has_error:
                node = child
                break
        else:
            return node


def new_parser(language: str) -> Parser:
    return Parser(Language(GRAMMARS[language].language()))
