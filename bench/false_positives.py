"""False positives of the credential scan on code nobody here wrote:
`python -m bench.false_positives [--show 40] [ROOT ...]`.

Scans every .py, .js and .go file of the open-source packages on this machine, the ones the
test suite installs or fills: the test venv's site-packages, Node.js packages (node_modules
folders under the build-context cache and the system's, and the tarballs of the npm cache)
and the Go module cache. Extra folders may be given as arguments. A published package holds no
live credential, so every finding counts as a false positive (documented example keys such as
AWS's `AKIAIOSFODNN7EXAMPLE` included); the findings are printed to be judged.

The packages' own tests are left out: a path with a folder named test, tests, testdata,
fixtures, __tests__ or spec, or a test file by its language's naming (test_*.py, *_test.py,
*_test.go, *.test.js, *.spec.js). Both counts are printed: with the test files and without.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from function import credentials

SUFFIXES = (".py", ".js", ".go")
_TEST_FOLDERS = {"test", "tests", "testdata", "fixtures", "__tests__", "spec"}
_TEST_FILE = re.compile(r"test_.*\.py|.*_test\.py|.*_test\.go|.*\.(?:test|spec)\.js")
GOAL = 1.0
"""False positives per 1,000 files outside tests (issue 21)."""


def is_test(path: str) -> bool:
    parts = path.split("/")
    return bool(_TEST_FOLDERS.intersection(parts[:-1])) or bool(_TEST_FILE.fullmatch(parts[-1]))


@dataclass
class Source:
    name: str
    files: int = 0
    test_files: int = 0
    bytes: int = 0
    findings: list[tuple[str, credentials.Finding]] = field(default_factory=list)
    test_findings: int = 0


def _tree(root: Path) -> Iterator[tuple[str, str]]:
    for folder, folders, names in os.walk(root):
        folders.sort()
        for name in sorted(names):
            if name.endswith(SUFFIXES):
                path = Path(folder, name)
                try:
                    text = path.read_text("utf-8", errors="replace")
                except OSError:
                    continue
                yield str(path.relative_to(root)), text


def _npm_cache(root: Path) -> Iterator[tuple[str, str]]:
    """The package tarballs in npm's content-addressed cache (_cacache/content-v2)."""
    for blob in sorted((root / "_cacache" / "content-v2").rglob("*")):
        if not blob.is_file():
            continue
        data = blob.read_bytes()
        if data[:2] != b"\x1f\x8b":
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(SUFFIXES):
                        handle = tar.extractfile(member)
                        if handle is not None:
                            text = handle.read().decode("utf-8", errors="replace")
                            yield f"{blob.name[:12]}/{member.name}", text
        except (OSError, tarfile.TarError, EOFError):
            continue


def _go_mod_cache() -> Path | None:
    try:
        found = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    path = Path(found) if found else Path.home() / "go" / "pkg" / "mod"
    return path if path.is_dir() else None


def sources(extra: Sequence[Path]) -> list[tuple[str, Path, Iterator[tuple[str, str]]]]:
    found: list[tuple[str, Path, Iterator[tuple[str, str]]]] = []
    site = Path(sysconfig.get_paths()["purelib"])
    found.append(("python: site-packages of the test venv", site, _tree(site)))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "build-context"
    node_roots = sorted(
        p for p in cache.glob("**/node_modules") if "node_modules" not in p.parent.parts
    )
    node_roots += [
        p
        for p in (Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"))
        if p.is_dir()
    ]
    for root in node_roots:
        found.append((f"nodejs: {root}", root, _tree(root)))
    npm = Path.home() / ".npm"
    if (npm / "_cacache").is_dir():
        found.append((f"nodejs: npm cache tarballs in {npm}", npm, _npm_cache(npm)))
    go = _go_mod_cache()
    if go is not None:
        found.append((f"go: module cache {go}", go, _tree(go)))
    found += [(f"extra: {root}", root, _tree(root)) for root in extra]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.false_positives", description=__doc__)
    parser.add_argument("roots", nargs="*", type=Path, help="more folders to scan")
    parser.add_argument("--show", type=int, default=40, help="findings to print (default 40)")
    args = parser.parse_args(argv)
    results: list[Source] = []
    started = time.process_time()
    for name, _, texts in sources(args.roots):
        source = Source(name)
        for path, text in texts:
            test = is_test(path)
            source.files += 1
            source.test_files += test
            source.bytes += len(text)
            for finding in credentials.scan_text(path, text).findings:
                if test:
                    source.test_findings += 1
                else:
                    source.findings.append((name, finding))
        if source.files:
            results.append(source)
    cpu = time.process_time() - started
    print(
        "| source | files (tests) | MiB | findings outside tests | in tests | per 1,000 files outside tests |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for s in results:
        outside = s.files - s.test_files
        rate = 1000 * len(s.findings) / outside if outside else 0.0
        print(
            f"| {s.name} | {s.files} ({s.test_files}) | {s.bytes / 2**20:.0f} | "
            f"{len(s.findings)} | {s.test_findings} | {rate:.2f} |"
        )
    files = sum(s.files for s in results)
    outside = files - sum(s.test_files for s in results)
    false = [f for s in results for f in s.findings]
    rate = 1000 * len(false) / outside if outside else 0.0
    print(
        f"\n{files} files scanned ({outside} outside tests, "
        f"{sum(s.bytes for s in results) / 2**20:.0f} MiB) in {cpu:.1f} s of CPU; "
        f"{len(false)} false positives outside tests: {rate:.2f} per 1,000 files "
        f"(goal: at most {GOAL:g}); with tests: "
        f"{1000 * (len(false) + sum(s.test_findings for s in results)) / max(files, 1):.2f}"
    )
    kinds = Counter(f.kind for _, f in false)
    if kinds:
        print("by kind: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()))
    for name, f in false[: args.show]:
        print(f"  {name.split(':')[0]}: {f.file}:{f.line} {f.kind}")
    return 0 if rate <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
