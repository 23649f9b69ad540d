"""Syntax checks cost bounded work and memory whatever the source (issue 21, class 2).

tree-sitter (JavaScript, Go, Python newer than the server's) parses in a forked child under a
budget of steps, a share of CPU time and a memory limit (function/syntax_checker.py);
CPython's compile() is called only when what its f-string handling copies is bounded
(function/runtimes/python_syntax.py); each dependency is bounded in length before it is
parsed. No test here times anything: boundedness is shown by the budget that stopped a parse,
and by the peak memory of the processes involved. bench/worst_case.py measures the CPU, and
bench/syntax_budget.py how far real code stays from each budget.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from function import boundary, syntax_checker
from function.errors import InvalidRequest, InvalidSource
from function.runtimes import python_syntax
from function.syntax_parse import MIB, inspect, new_parser, step_budget
from tests.conftest import StartServer
from tests.support.consumers import pip_reads, python_compiles
from tests.test_boundary import SETTINGS, check, refused

ROOT = Path(__file__).resolve().parents[1]
FILE_MAX = 1024 * 1024 - 1
"""The largest file the default settings take (BUILD_CONTEXT_MAX_FILE_BYTES, 1 MiB)."""
TOO_COMPLEX = "too complex to check: the parser "
LIMITS = ("stopped at", "used up its CPU time", "ran out of memory")


def fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _too_complex(error: dict[str, Any], path: str) -> None:
    assert error["file"] == path
    assert TOO_COMPLEX in error["message"], error
    assert any(limit in error["message"] for limit in LIMITS), error
    assert "fix the first syntax errors, or split the file" in error["message"]


def _peak_rss_mib(pid: int) -> float:
    """The process's own peak resident memory (VmHWM), children excluded."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# --- through the real HTTP server --------------------------------------------------------------


def test_javascript_whose_error_recovery_explodes_is_refused_as_too_complex(
    start_server: StartServer,
) -> None:
    """What issue 21 found: `let = ;` repeated took 10 s and 3.3 GB for 128 KiB, and crashed
    the server beyond (within the request limits too)."""
    server = start_server()
    reply = server.send(
        {"lambdaFunction": "js", "runtime": "nodejs", "sourceCode": fill("let = ;\n", FILE_MAX)},
        timeout=120,
    )
    assert reply.type == "buildcontext.failed" and reply.data["reason"] == "InvalidSource"
    _too_complex(reply.data["errors"][0], "remediation.js")
    assert reply.data["message"].startswith("remediation.js: JavaScript: too complex to check")
    reply = server.send({"lambdaFunction": "js", "runtime": "nodejs", "sourceCode": "let x = 1;\n"})
    assert reply.type == "buildcontext.created", reply


def test_a_quadratic_count_of_parse_steps_is_refused_as_too_complex(
    start_server: StartServer,
) -> None:
    """64 KiB of ` , ==+ ` took a quadratic number of steps: over a minute."""
    server = start_server()
    files = {
        "remediation.go": "package main\n\nfunc main() {}\n",
        "soup.go": "package main\n\nfunc f() {\n" + fill(" , ==+ ", 64 * 1024),
    }
    reply = server.send({"lambdaFunction": "go", "runtime": "go", "files": files}, timeout=120)
    assert reply.data["reason"] == "InvalidSource", reply
    (error,) = reply.data["errors"]
    _too_complex(error, "soup.go")


def test_hostile_syntax_does_not_grow_the_server_process(start_server: StartServer) -> None:
    """Four files of 1 MiB of `a(` made trees of 300 MB each in the server process; parsed
    in a child, they leave the server's own peak memory where it was."""
    server = start_server(BUILD_CONTEXT_PROCESSES="1")
    assert server.process is not None
    server.send({"lambdaFunction": "js", "runtime": "nodejs", "sourceCode": "let x = 1;\n"})
    before = _peak_rss_mib(server.process.pid)
    files = {
        "remediation.js": fill("a(", FILE_MAX),
        **{f"lib/m{n}.js": fill("(a,", FILE_MAX) for n in range(3)},
    }
    reply = server.send({"lambdaFunction": "js", "runtime": "nodejs", "files": files}, timeout=120)
    assert reply.data["reason"] == "InvalidSource", reply
    assert [e["file"] for e in reply.data["errors"]] == sorted(files)
    assert _peak_rss_mib(server.process.pid) - before < 100


def test_python_with_many_fstring_fields_is_refused_before_compile(
    start_server: StartServer,
) -> None:
    """CPython copies the rest of the file at every f-string field: 1 MiB of `f"{x}"` lines
    took 5 s to compile (25 s for the largest request), and is valid Python."""
    server = start_server()
    source = 'f"{x}"\n' * (FILE_MAX // 7)
    reply = server.send({"lambdaFunction": "fs", "sourceCode": source}, timeout=120)
    assert reply.data["reason"] == "InvalidSource", reply
    (error,) = reply.data["errors"]
    assert error["file"] == "remediation.py"
    assert "too complex to check: 149,796 f-string replacement fields" in error["message"]
    assert (
        f"the limit is {python_syntax.FSTRING_COPIES:,} times the file's size" in error["message"]
    )
    assert "split the file" in error["message"]


def test_a_dependency_over_the_length_bound_is_refused(start_server: StartServer) -> None:
    """100 dependencies of long markers took 4.4 s to read (16 MiB)."""
    server = start_server()
    marker = fill("python_version > '3' and ", 2100).rsplit(" and ", 1)[0]
    specs = [f"p{n}; {marker}" for n in range(3)]
    reply = server.send({"lambdaFunction": "deps", "sourceCode": "x = 1\n", "dependencies": specs})
    assert reply.data["reason"] == "InvalidRequest", reply
    assert [e["field"] for e in reply.data["errors"]] == [f"dependencies[{n}]" for n in range(3)]
    assert reply.data["errors"][0]["message"] == (
        f"{len(specs[0])} characters; the limit is {boundary.DEPENDENCY_MAX} per dependency: "
        "name one package and a version range, without long markers"
    )


# --- the budgets themselves --------------------------------------------------------------------


@pytest.mark.parametrize("language", ["javascript", "go", "python"])
def test_the_step_budget_stops_a_parse_the_same_way_on_every_machine(language: str) -> None:
    source = fill(" , ==+ ", 4096).encode()
    outcome = inspect(new_parser(language), source)
    assert outcome.verdict == "steps"
    assert outcome.steps == step_budget(len(source)) + 1 == 100_000 // 100 + 256 * 4 + 1


def test_a_parse_out_of_memory_is_stopped_and_its_peak_stays_under_the_limit() -> None:
    """The checker's code for a request, in a child forked from a fresh interpreter (so that
    its children's peak is that child's own), given 300 s of CPU so that only memory can stop
    it: 256 KiB of `(a,` needs 280 MiB, over its limit of 64 + 64 MiB."""
    script = """
import json, os, resource
from function import syntax_checker, syntax_parse
source = ("(a," * 90000).encode()
reader, writer = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(writer, 1)
    syntax_checker._check_files(syntax_parse.new_parser("javascript"), [source], None, 300.0)
    os._exit(0)
os.close(writer)
lines = os.fdopen(reader, "rb").read().splitlines()
status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
peaks = [resource.getrusage(who).ru_maxrss * 1024
         for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
budget = syntax_parse.memory_budget(len(source))
print(json.dumps([[json.loads(line)["verdict"] for line in lines], status, *peaks, budget]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    verdicts, status, child_peak, parent_peak, budget = json.loads(done.stdout)
    # a failed allocation raises MemoryError, or crashes the parser (SIGSEGV)
    assert verdicts == ["memory"] or (verdicts == [] and status == -signal.SIGSEGV), done.stdout
    # the child starts as a copy of its parent: its peak is the parent's plus the budget
    assert child_peak < parent_peak + budget


def test_a_file_that_kills_the_child_costs_only_itself_a_refusal() -> None:
    outcomes = syntax_checker.check(
        "javascript",
        [
            ("broken.js", b"let = ;"),
            ("huge.js", fill("(a,", 2 * MIB).encode()),
            ("after.js", b"let = ;\nlet y = 2;"),
            ("fine.js", b"let x = 1;"),
        ],
    )
    assert [o.verdict for o in outcomes] == ["syntax", "memory", "syntax", "ok"]
    assert (outcomes[2].line, outcomes[2].what) == (1, "unexpected '='")


def test_real_code_passes_well_within_every_budget() -> None:
    """The examples' own sources (bench/syntax_budget.py reads every package on the machine)."""
    for name in ("nodejs.json", "go.json"):
        data = json.loads((ROOT / "examples" / name).read_text())
        check(data)
    source = (ROOT / "function" / "syntax_parse.py").read_bytes()
    outcome = inspect(new_parser("python"), source)
    assert outcome.verdict == "ok" and outcome.steps < step_budget(len(source)) / 4


# --- Python: refuse more than CPython, never accept more ---------------------------------------


def test_the_fstring_bound_refuses_only_what_cpython_compiles_slowly() -> None:
    fields = fill('f"{x}"\n', 300_000)
    error = refused({"lambdaFunction": "fs", "sourceCode": fields})
    assert isinstance(error, InvalidSource) and "f-string replacement fields" in error.message
    assert python_compiles(fields.encode())  # refused for its cost, not its syntax
    # ordinary f-string-heavy code, and many dicts (counted as fields only if in f-strings)
    lines = 'print(f"{a} {b!r:>{w}}")\n' + "total = total + value * 2\n" * 9
    check({"lambdaFunction": "fs", "sourceCode": lines * 1000})
    check({"lambdaFunction": "fs", "sourceCode": fill("x = {1: {2: 3}}\n", 600_000)})
    # fields on one long line: the tokenizer would copy quadratically too, so refused unread
    line = "x = " + "+".join(['f"{x}"'] * 40_000) + "\n"
    assert (
        "too complex to check: f-strings"
        in refused({"lambdaFunction": "fs", "sourceCode": line}).message
    )


def test_a_dependency_at_the_length_bound_is_read_by_pip_as_written() -> None:
    from packaging.requirements import Requirement

    head = "requests>=2.31; "
    marker = fill("python_version >= '3' and ", boundary.DEPENDENCY_MAX - len(head) - 30)
    spec = head + marker.rsplit(" and ", 1)[0]
    spec += " " * (boundary.DEPENDENCY_MAX - len(spec))
    assert len(spec) == boundary.DEPENDENCY_MAX
    valid = check({"lambdaFunction": "deps", "sourceCode": "x = 1\n", "dependencies": [spec]})
    rendered = valid.runtime.render(valid.runtime_version, valid.dependencies, SETTINGS)
    assert [str(Requirement(r)) for r in pip_reads(rendered.manifests["requirements.txt"])] == [
        str(Requirement(spec))
    ]
    error = refused(
        {"lambdaFunction": "deps", "sourceCode": "x = 1\n", "dependencies": [spec + " "]}
    )
    assert isinstance(error, InvalidRequest) and error.errors[0].field == "dependencies[0]"
    npm = refused({"lambdaFunction": "n", "runtime": "nodejs", "sourceCode": "1;\n",
                   "dependencies": {"left-pad": "^1.0.0" + " || ^1.0.0" * 100}})  # fmt: skip
    assert npm.errors[0].field == "dependencies.left-pad" and "the limit is 1000" in npm.message
