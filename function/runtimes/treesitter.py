"""Syntax checks for languages we do not run in-process, with compiled tree-sitter grammars."""

from __future__ import annotations

import threading
from typing import Any

from tree_sitter import Language, Node, Parser

from ..errors import FieldError


class TreeSitterGrammar:
    """One compiled grammar per process; one parser per thread (parsers are not thread-safe)."""

    def __init__(self, capsule: Any, language: str) -> None:
        self.language = Language(capsule)
        self.name = language
        self._local = threading.local()

    def parse(self, text: str) -> Node:
        parser: Parser | None = getattr(self._local, "parser", None)
        if parser is None:
            parser = self._local.parser = Parser(self.language)
        return parser.parse(text.encode("utf-8")).root_node

    def first_error(self, path: str, root: Node, text: str) -> list[FieldError]:
        if not root.has_error:
            return []
        node = _first_broken(root)
        line, byte_col = node.start_point
        line_text = text.encode("utf-8").split(b"\n")[line] if text else b""
        column = len(line_text[:byte_col].decode("utf-8", "replace")) + 1
        if node.is_missing:
            what = f"missing {node.type!r}"
        else:
            snippet = (node.text or b"").decode("utf-8", "replace").strip().splitlines()
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
