"""How close real code comes to the syntax checks' budgets:
`python -m bench.syntax_budget [--limit N] [ROOT ...]`.

Every .js and .go file of the packages on this machine (the corpus of bench/false_positives.py:
node_modules folders, the npm cache's tarballs, the Go module cache; the examples' sources;
extra folders as arguments) is parsed as the syntax check parses it, in this process, and
compared with its budgets (function/syntax_parse.py): parse steps, CPU time (the file
alone in a request: 0.25 s + 10 ms + 1 ms per KiB) and memory (the tree's allocations, which
tree-sitter makes through Python's allocator, traced; the address space the budget limits is
some 40 % more). Every .py file is compared with the bound on what CPython's f-string
handling copies (function/runtimes/python_syntax.py). A ratio of 1 would refuse the file; the
goal is a wide margin (at most 0.25). The files closest to each budget are printed, and the
closest ones are then checked for real (by the syntax checker, its limits on) to show they
pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.false_positives import sources
from function import syntax_checker, syntax_parse
from function.runtimes import python_syntax

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = {".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".go": "go"}
GOAL = 0.25


@dataclass
class Worst:
    """The highest ratios to one budget, with the files they came from."""

    name: str
    top: list[tuple[float, str, bytes]] = field(default_factory=list)

    def add(self, ratio: float, path: str, source: bytes) -> None:
        if len(self.top) < 3 or ratio > self.top[-1][0]:
            self.top.append((ratio, path, source))
            self.top.sort(key=lambda entry: entry[0], reverse=True)
            del self.top[3:]

    @property
    def ratio(self) -> float:
        return self.top[0][0] if self.top else 0.0


def _examples() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "examples").glob("*.json")):
        data = json.loads(path.read_text())
        entry = {"nodejs": "remediation.js", "go": "remediation.go"}.get(data.get("runtime", ""))
        if entry and data.get("sourceCode"):
            yield f"{path.name}/{entry}", data["sourceCode"]
        for name, text in (data.get("files") or {}).items():
            yield f"{path.name}/{name}", text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syntax_budget", description=__doc__)
    parser.add_argument("roots", nargs="*", type=Path, help="more folders to read")
    parser.add_argument("--limit", type=int, default=0, help="files per source (0: all)")
    args = parser.parse_args(argv)
    parsers = {language: syntax_parse.new_parser(language) for language in set(LANGUAGES.values())}
    steps, cpu, memory, fstrings = (
        Worst("parse steps"),
        Worst("CPU time"),
        Worst("memory (traced)"),
        Worst("f-string copies (.py)"),
    )
    counts = {"javascript": 0, "go": 0, "python": 0}
    size_total = 0
    started = time.process_time()
    corpus = [(name, texts) for name, _, texts in sources(args.roots)]
    corpus.append(("examples", _examples()))
    for name, texts in corpus:
        seen = 0
        for path, text in texts:
            if args.limit and seen >= args.limit:
                break
            suffix = Path(path).suffix
            source = text.encode("utf-8")
            if suffix == ".py":
                seen += 1
                counts["python"] += 1
                copied = python_syntax.fstring_copies(source, text)[0]
                budget = python_syntax.FSTRING_COPIES * max(len(source), 1)
                fstrings.add(copied / budget, path, source)
                continue
            language = LANGUAGES.get(suffix)
            if language is None or not source:
                continue
            seen += 1
            counts[language] += 1
            size_total += len(source)
            before = time.thread_time()
            root, reports = syntax_parse.parse(parsers[language], source)
            spent = time.thread_time() - before
            del root
            tracemalloc.start()  # once more, traced (tracing slows the parse: not timed)
            root, _ = syntax_parse.parse(parsers[language], source)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del root
            steps.add(reports / syntax_parse.step_budget(len(source)), path, source)
            cpu.add(spent / syntax_parse.cpu_budget([len(source)]), path, source)
            memory.add(peak / syntax_parse.memory_budget(len(source)), path, source)
        print(f"{name}: {seen} files", file=sys.stderr, flush=True)
    print(
        f"{counts['javascript']} JavaScript and {counts['go']} Go files "
        f"({size_total / 2**20:.0f} MiB), {counts['python']} Python files, "
        f"in {time.process_time() - started:.0f} s of CPU\n"
    )
    print("| budget | highest ratio (real code / budget) | file | bytes |")
    print("| --- | --- | --- | --- |")
    for worst in (steps, cpu, memory, fstrings):
        for ratio, path, source in worst.top:
            print(f"| {worst.name} | {ratio:.4f} | {path[-70:]} | {len(source)} |")
    closest = {path: source for w in (steps, cpu, memory) for _, path, source in w.top}
    refused = []
    for path, source in closest.items():
        (outcome,) = syntax_checker.check(LANGUAGES[Path(path).suffix], [(path, source)])
        if outcome.verdict in ("steps", "cpu", "memory"):
            refused.append(f"{path}: {outcome.verdict}")
    print(
        f"\nthe {len(closest)} closest files, checked for real (by the syntax checker, limits on): "
        + ("all pass" if not refused else f"REFUSED {refused}")
    )
    highest = max(w.ratio for w in (steps, cpu, memory, fstrings))
    print(f"highest ratio {highest:.4f} (goal: at most {GOAL:g})")
    return 0 if highest <= GOAL and not refused else 1


if __name__ == "__main__":
    sys.exit(main())
