"""Syntax checks for languages we do not run in-process, with compiled tree-sitter grammars."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from tree_sitter import Language, Node, Parser, Tree

from ..errors import FieldError

CHUNK_BYTES = 16 * 1024
"""The parser reads the source in chunks through a Python callback. A parse holds the GIL
while it runs (60 ms for 900 KB), and between chunks the other request threads of the process
get their turn: a Python loop beside repeated 900 KB parses ran 2.4x slower with 16 KiB chunks
and 13x slower with the source passed whole; the parse itself takes about 3 % longer."""


@dataclass(frozen=True)
class Parsed:
    """A syntax tree and the bytes it was parsed from. Node text is sliced from those bytes:
    `Node.text` of a tree read through a callback calls the callback again, and py-tree-sitter
    0.26.1 crashes the process (SIGSEGV) when that call fails."""

    tree: Tree
    source: bytes

    @property
    def root(self) -> Node:
        return self.tree.root_node

    def text(self, node: Node) -> bytes:
        return self.source[node.start_byte : node.end_byte]


MAX_DEPTH = 500
"""Deepest syntax tree accepted. The consumers' parsers recurse: node 20-24 overflows its stack
on 2,000 nested parentheses or blocks (1,000 pass), CPython refuses 200 nested brackets, and
real programs stay below 100 levels. Deeper sources are refused as InvalidSource."""


class TreeSitterGrammar:
    """One compiled grammar per process; one parser per thread (parsers are not thread-safe)."""

    def __init__(self, capsule: Any, language: str) -> None:
        self.language = Language(capsule)
        self.name = language
        self._local = threading.local()

    def parse(self, text: str) -> Parsed:
        parser: Parser | None = getattr(self._local, "parser", None)
        if parser is None:
            parser = self._local.parser = Parser(self.language)
        source = text.encode("utf-8")
        tree = parser.parse(lambda offset, _point: source[offset : offset + CHUNK_BYTES])
        return Parsed(tree, source)

    def first_error(self, path: str, parsed: Parsed) -> list[FieldError]:
        if deeper_than(parsed.root, MAX_DEPTH):
            return [too_deep(path, self.name)]
        if not parsed.root.has_error:
            return []
        node = _first_broken(parsed.root)
        line, byte_col = node.start_point
        line_text = parsed.source.split(b"\n")[line] if parsed.source else b""
        column = len(line_text[:byte_col].decode("utf-8", "replace")) + 1
        if node.is_missing:
            what = f"missing {node.type!r}"
        else:
            snippet = parsed.text(node).decode("utf-8", "replace").strip().splitlines()
            what = (
                f"unexpected {snippet[0][:40]!r}" if snippet and snippet[0] else "unexpected input"
            )
        return [
            FieldError(
                f"{self.name} syntax error: {what} at line {line + 1}, column {column}; "
                "fix the source so that it parses",
                file=path,
                line=line + 1,
                column=column,
            )
        ]


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


def too_deep(path: str, language: str) -> FieldError:
    """The caller's source exhausted a parser's stack or memory: their input, not our bug."""
    return FieldError(
        f"{language}: the source nests too deeply to parse (more than {MAX_DEPTH} levels of "
        "brackets, blocks or operators); split the expression into statements",
        file=path,
        line=1,
        column=1,
    )


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
