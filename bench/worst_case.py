"""The slowest input we could construct for each check, and the CPU it costs:
`python -m bench.worst_case [--size-mib 16] [--only credentials,syntax,...]`.

Each check is called directly on an input of `--size-mib` (16 MiB by default: settings cap a
request well below, at 1 MiB a file and 4 MiB in all), then `validation.validate` (the entry
point of every check) is called with the largest request the default settings allow, four
files of 1 MiB of the worst content. Every case runs in a child process with a CPU limit
(`--cpu-limit`, 60 s) and a memory limit (`--memory-limit-gib`, 4 GiB), so that a check that
blows up is reported as such instead of taking the machine down. CPU is the child's process
time and its children's (the syntax checks of JavaScript and Go run in a checker process);
`x sha256` is the ratio to hashing the same bytes in the same run (the floor of any check that
reads its input once).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

MIB = 1024 * 1024
REQUEST_FILE = MIB
"""BUILD_CONTEXT_MAX_FILE_BYTES's default; four of them are BUILD_CONTEXT_MAX_TOTAL_BYTES."""


def fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _jwt_decoy() -> str:
    return "eyJ" + "A" * 8 + ".eyJ" + "B" * 8 + "." + "C" * 16 + " "


# name -> (check, unit the input repeats, file name): the slowest units found for each
CREDENTIALS: dict[str, tuple[str, str]] = {
    "AWS-key lines (issue 21)": ('A = "AKIAIOSFODNN7EXAMPL3"\n', "a.py"),
    "JWT-shaped decoys": (_jwt_decoy(), "a.py"),
    "eyJ run": ("eyJ", "a.py"),
    "connection-string decoys": ("://a:pass@a ", "a.py"),
    "placeholder passwords (config)": ('password = "password1"\n', "a.yaml"),
    "low-entropy keys (config)": ('api_key = "' + "aB3xY9" * 4 + '"\n', "a.yaml"),
    "describing names (config)": ("pwd_file=abcdefg\n", "a.yaml"),
    "key=key=… (config)": ("key=", "a.yaml"),
    "private-key markers": ("-----BEGIN RSA PRIVATE KEY----- ", "a.py"),
    "kubeconfig decoys (config)": ("client-key-data: " + "A" * 39 + "\n", "a.yaml"),
    "quotes without close": ("'" + "a" * 600, "a.py"),
}
SYNTAX: dict[str, tuple[str, str, str]] = {
    "python: statements": ("python", "x = 1\n", "3.13"),
    "python: nested lists": ("python", "[[[[[[[[[[1]]]]]]]]]]\n", "3.13"),
    "python: f-string fields (issue 21)": ("python", 'f"{x}"\n', "3.13"),
    "python: f-strings with nested specs": ("python", 'f"{x!r:>{w}}"\n', "3.13"),
    "python: dict displays (fields counted by tokens)": ("python", "x = {1: 2}\n", "3.13"),
    "python: f-string fields on one line": ("python", 'f"{x}" ', "3.13"),
    "python 3.14 (tree-sitter): operator soup": ("python", " , ==+ ", "3.14"),
    "javascript: statements": ("nodejs", "let x = 1;\n", "24"),
    "javascript: unterminated calls": ("nodejs", "a(", "24"),
    "javascript: invalid declarations (issue 21)": ("nodejs", "let = ;\n", "24"),
    "javascript: operator soup": ("nodejs", " , ==+ ", "24"),
    "javascript: empty strings": ("nodejs", "'", "24"),
    "javascript: open argument lists": ("nodejs", "(a,", "24"),
    "go: statements": ("go", "x := 1\n", "1.26"),
    "go: unbalanced braces": ("go", "{", "1.26"),
    "go: open calls": ("go", "x(", "1.26"),
    "go: quotes": ("go", '"', "1.26"),
    "go: operator soup": ("go", " , ==+ ", "1.26"),
}
"""The slowest units found: an error at every token (per-error work), a quadratic count of
steps (operator soup), error recovery that explodes at the end of the file (invalid
declarations), trees of 1,000+ bytes a byte (open lists and calls)."""


def _cases(size: int) -> dict[str, Callable[[], object]]:
    """Every case by name, its input built (all of them: a child's peak memory holds them
    all, so the table shows the peak above the baseline case's)."""
    from function import boundary, credentials, fields, secret_scan, validation
    from function.runtimes import resolve
    from function.settings import Settings

    settings = Settings()
    unbounded = Settings(max_metadata_entries=10**9)
    data = fill("a", size).encode()
    cases: dict[str, Callable[[], object]] = {
        "sha256 (baseline)": lambda: hashlib.sha256(data).digest()
    }
    for name, (unit, path) in CREDENTIALS.items():
        text = fill(unit, size)
        cases[f"credentials: {name}"] = functools.partial(credentials.scan, {path: text})
    text = fill("pkg @ https://user:" + "p" * 50 + "@host/x ", size)
    cases["quote: a long URL"] = lambda: boundary.quote(text)
    for name, (runtime, unit, version) in SYNTAX.items():
        found, _ = resolve(runtime, version)
        prefix = "package main\nfunc main() {\n" if runtime == "go" else ""
        source = prefix + fill(unit, size - len(prefix))
        path = found.entry_file
        cases[f"syntax: {name}"] = functools.partial(found.source_errors, {path: source}, version)
    python, _ = resolve("python", None)
    nodejs, _ = resolve("nodejs", None)
    go, _ = resolve("go", None)
    per = size // 100
    markers = [f"p{i}; " + fill("python_version > '3' and ", per)[:-5] for i in range(100)]
    cases["dependencies: python, 100 long markers"] = lambda: _refused(
        _dependencies, python, markers, settings
    )
    ranges = {f"p{i}": fill("1.0.0 || ", per)[:-4] for i in range(100)}
    cases["dependencies: nodejs, 100 long ranges"] = lambda: _refused(
        _dependencies, nodejs, ranges, settings
    )
    modules = [f"example.com/{fill('a/', per)}m{i}@v1.0.0" for i in range(100)]
    cases["dependencies: go, 100 long paths"] = lambda: _refused(
        _dependencies, go, modules, settings
    )
    pip_line = "pkg==1.0 --hash=sha256:" + "a" * 64 + " \\\n"
    cases["lock: pip, continued lines"] = lambda: _refused(
        python.lock, fill(pip_line, size), python.dependencies(["pkg"], settings), settings
    )
    packages = {
        f"node_modules/p{i}": {"version": "1.0.0", "resolved": "https://r/p.tgz", "integrity": "x"}
        for i in range(size // 90)
    }
    lock_json = json.dumps({"lockfileVersion": 3, "packages": {"": {}, **packages}})
    cases["lock: package-lock.json, many packages"] = lambda: _refused(
        nodejs.lock, lock_json, nodejs.dependencies({"p1": "^1.0.0"}, settings), settings
    )
    go_sum = fill("example.com/m v1.0.0 h1:" + "A" * 43 + "=\n", size)
    cases["lock: go.sum, many lines"] = lambda: _refused(
        go.lock, go_sum, go.dependencies(["example.com/m@v1.0.0"], settings), settings
    )
    paths = [fill("abcdefgh/", 99) + str(i % 10) for i in range(size // 100)]
    cases["paths: 100-byte paths"] = lambda: [validation.path_problem(p, 100) for p in paths]
    metadata = {f"k{i}": fill("v", 1000) for i in range(size // 1010)}
    cases["metadata: checks of 1,000-character values"] = lambda: _refused(
        fields.metadata, metadata, unbounded
    )
    cases["metadata: credential scan of them"] = lambda: secret_scan.check_metadata(
        metadata, unbounded
    )
    body = json.dumps({"lambdaFunction": "f", "sourceCode": fill("x = 1\n", size)})
    cases["request: JSON parse"] = lambda: validation.parse(body)
    return cases


def _dependencies(runtime: Any, deps: Any, settings: Any) -> object:
    """As validate checks them: each entry's length first, then the runtime's grammar."""
    from function import validation

    validation.check_dependency_lengths(deps)
    return runtime.dependencies(deps, settings)


def _refused(check: Callable[..., object], *args: object) -> object:
    from function.errors import BuildContextError

    try:
        return check(*args)
    except BuildContextError as error:
        return error.reason


def _validate_cases() -> dict[str, Callable[[], object]]:
    """validation.validate with the largest request the default settings take."""
    from function.errors import BuildContextError
    from function.settings import Settings
    from function.validation import parse, validate

    settings = Settings()
    worst = {
        "AWS-key lines": ('A = "AKIAIOSFODNN7EXAMPL3"\n', "python"),
        "JWT-shaped decoys": (_jwt_decoy(), "python"),
        "placeholder passwords": ('password = "password1"\n', "python"),
        "f-string fields": ('f"{x}"\n', "python"),
        "javascript: invalid declarations": ("let = ;\n", "nodejs"),
        "javascript: operator soup": (" , ==+ ", "nodejs"),
        "javascript: empty strings": ("'", "nodejs"),
        "go: quotes": ('"', "go"),
    }
    cases: dict[str, Callable[[], object]] = {}
    for name, (unit, runtime) in worst.items():
        suffix = {"python": ".py", "nodejs": ".js", "go": ".go"}[runtime]
        entry = "remediation" + suffix
        files = {f"lib/m{i}{suffix}": fill(unit, REQUEST_FILE - 1) for i in range(3)}
        data = {
            "lambdaFunction": "worst",
            "runtime": runtime,
            "files": {entry: fill(unit, REQUEST_FILE - 1), **files},
        }

        def run(d: dict[str, Any] = data) -> object:
            try:
                return validate(parse(d), settings)
            except BuildContextError as error:
                return error.reason

        cases[f"validate, 4 x 1 MiB: {name}"] = run
    return cases


def _child(name: str, size: int) -> None:
    cases = _validate_cases() if name.startswith("validate") else _cases(size)
    from function import syntax_checker

    action = cases[name]
    start = time.process_time() + _children_cpu()
    action()
    syntax_checker.stop()  # its CPU counts once it has been waited for
    cpu = time.process_time() + _children_cpu() - start
    peak = max(
        resource.getrusage(who).ru_maxrss / 1024
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    print(json.dumps({"cpu": cpu, "peakMiB": peak}))


def _children_cpu() -> float:
    """The syntax checks of JavaScript and Go run in a checker process: its CPU counts."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(name: str, size: int, cpu_limit: int, memory_gib: float) -> dict[str, Any]:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))
        memory = int(memory_gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    done = subprocess.run(
        [sys.executable, "-m", "bench.worst_case", "--child", name, "--size", str(size)],
        capture_output=True,
        text=True,
        preexec_fn=limits,
        check=False,
    )
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
    if done.returncode in (-9, -24) or "CPU" in tail:
        return {"failed": f"over {cpu_limit} s of CPU (killed)"}
    if "MemoryError" in tail or done.returncode in (-6, -11):
        return {"failed": f"over {memory_gib:g} GiB (crashed: {done.returncode})"}
    return {"failed": f"exit {done.returncode}: {tail[:80]}"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worst_case", description=__doc__)
    parser.add_argument("--size-mib", type=float, default=16.0)
    parser.add_argument("--only", default="", help="comma-separated prefixes of case names")
    parser.add_argument("--cpu-limit", type=int, default=60)
    parser.add_argument("--memory-limit-gib", type=float, default=4.0)
    parser.add_argument("--no-validate", action="store_true", help="skip the validate cases")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.size)
        return 0
    size = int(args.size_mib * MIB)
    names = list(_cases(1024)) + ([] if args.no_validate else list(_validate_cases()))
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    names = [
        n for n in names if not wanted or n.startswith("sha256") or n.startswith(tuple(wanted))
    ]
    print(
        "| check: input | MiB | CPU (s) | ms per MiB | x sha256 | peak memory over baseline (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    baseline, memory = 0.0, 0.0
    for name in names:
        mib = 4.0 if name.startswith("validate") else size / MIB
        result = _run(name, size, args.cpu_limit, args.memory_limit_gib)
        if "failed" in result:
            print(f"| {name} | {mib:g} | {result['failed']} | | | |", flush=True)
            continue
        cpu = result["cpu"]
        baseline = baseline or max(cpu, 1e-6)
        memory = memory or result["peakMiB"]
        print(
            f"| {name} | {mib:g} | {cpu:.2f} | {cpu * 1000 / mib:.0f} | "
            f"{cpu / baseline:.0f} | {max(0.0, result['peakMiB'] - memory):.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
