"""Tree-sitter syntax checks outside the server process, under hard limits.

Why: on hostile input, tree-sitter's error recovery grows in work that its progress callback
never sees. 128 KiB of JavaScript `let = ;` repeated took 10 s and 3.3 GB, most of it at the end
of the file, where recovery copies every path of its parse stack (`ts_stack_pop_all`) between
two progress reports; 1 MiB of `'` takes 7 s of per-error work
(`ts_parser__do_all_potential_reductions`) at a normal count of steps; ` , ==+ ` repeated takes
a quadratic number of steps. Budgets checked at progress reports (syntax_parse.py) stop the
last two; only the kernel can stop the first: a memory limit per file (RLIMIT_AS), and a CPU
limit per request (RLIMIT_CPU) for the work between reports.

How: every server process starts, on its first such check, one checker process (a fresh
interpreter that imports only syntax_parse: about 14 MiB) and sends it each request's files
through a pipe, one request at a time; it answers one JSON line per file. A limit that kills it
refuses the file it was parsing; the files after it go to a new checker. A checker whose
memory has grown leaves after answering. Parsing there costs the server 0.1 ms a request and
leaves its threads the GIL; forking the server for each request cost 20 ms of CPU (its heap),
forking the checker 2.6 ms.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .syntax_parse import (
    GRAMMARS,
    VERDICTS,
    Outcome,
    Verdict,
    cpu_budget,
    inspect,
    memory_budget,
    new_parser,
)

ROOT = Path(__file__).resolve().parents[1]


_LIMITS: dict[int, Verdict] = {
    signal.SIGXCPU: "cpu",  # RLIMIT_CPU
    # out of memory: the parser dereferences a failed allocation, or aborts; or the kernel's
    # OOM killer
    signal.SIGSEGV: "memory",
    signal.SIGBUS: "memory",
    signal.SIGABRT: "memory",
    signal.SIGKILL: "memory",
}
"""The signals that end a checker at a limit, and the limit each means."""


class CheckerFailed(RuntimeError):
    """The checker failed otherwise than by a limit: our bug, not the caller's."""


# --- in the checker process --------------------------------------------------------------------

RESIDENT_SLACK = 64 * 1024 * 1024
"""Memory a checker may keep above what it started with; beyond, it leaves after answering."""


def serve() -> None:
    """The checker's loop: a request is a JSON line {language, entry, sizes, cpu: the seconds
    it may take} and the files' bytes; the answer, {"clock": the checker's CPU time so far},
    one JSON line per file, and {"leaving": whether it now leaves}. It ends when its input
    closes (the server is gone)."""
    requests = sys.stdin.buffer
    parsers = {language: new_parser(language) for language in GRAMMARS}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # a signal to the server's process group (Ctrl-C, a group SIGTERM) must not end a check
    # the draining server still waits for: the checker leaves when the server is gone
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    started = _statm(1)
    with contextlib.suppress(BrokenPipeError):
        while header := requests.readline():
            request = json.loads(header)
            files = [requests.read(size) for size in request["sizes"]]
            _write(json.dumps({"clock": time.process_time()}).encode() + b"\n")
            _check_files(parsers[request["language"]], files, request["entry"], request["cpu"])
            leaving = _statm(1) > started + RESIDENT_SLACK
            _write(json.dumps({"leaving": leaving}).encode() + b"\n")
            if leaving:
                return


def _check_files(parser: Any, files: Sequence[bytes], entry: int | None, budget: float) -> None:
    """Each file under its limits (`budget`: CPU seconds for all), its Outcome written at once."""
    start = time.process_time()
    # between two progress reports only the kernel can stop the parser: 2x the budget + 1 s
    cpu_soft, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(start + 2 * budget) + 1, cpu_hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for index, source in enumerate(files):
        limit = _statm(0) + memory_budget(len(source))
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        try:
            outcome = inspect(parser, source, entry=index == entry, cpu_deadline=start + budget)
        except MemoryError:
            parser.reset()
            outcome = Outcome("memory")
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _write(json.dumps(dataclasses.asdict(outcome)).encode() + b"\n")
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))


def _statm(field: int) -> int:
    """Bytes of this process: 0, its address space; 1, resident."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")


def _write(data: bytes) -> None:
    while data:
        data = data[os.write(1, data) :]


# --- in the server -----------------------------------------------------------------------------


class _Checker:
    """The server process's checker, started on first use (again after a failure, or in a
    process forked from the one that started it), one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0

    def run(
        self, language: str, files: Sequence[tuple[str, bytes]], entry: str | None, cpu: float
    ) -> tuple[list[Outcome], float]:
        """The Outcomes of the files, up to the one that ended the checker (included), and
        the CPU seconds it took them (of `cpu`, what they may take)."""
        paths = [path for path, _ in files]
        header = {
            "language": language,
            "entry": paths.index(entry) if entry in paths else None,
            "sizes": [len(source) for _, source in files],
            "cpu": cpu,
        }
        with self._lock:
            process = self._started()
            try:
                outcomes, clock, leaving = _exchange(process, header, files)
            except BaseException:
                self.stop()
                raise
            if leaving is not None:
                if leaving:
                    self.stop()
                return outcomes, 0.0
            exitcode, spent = self._reap()
        verdict = _LIMITS.get(-exitcode)
        if verdict is None or clock is None:
            raise CheckerFailed(f"the syntax checker exited with {exitcode}")
        return [*outcomes, Outcome(verdict)], spent - clock

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._owner == os.getpid():
            return self._process
        boot = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from function.syntax_checker import serve; serve()"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._owner = os.getpid()
        return self._process

    def stop(self) -> None:
        """End the checker: it leaves when its input closes."""
        process, self._process = self._process, None
        if process is None or self._owner != os.getpid():
            return
        _close(process)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _reap(self) -> tuple[int, float]:
        """A checker that died: its exit code and the CPU seconds it took in all."""
        process, self._process = self._process, None
        assert process is not None
        _close(process)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode, usage.ru_utime + usage.ru_stime


def _exchange(
    process: subprocess.Popen[bytes], header: dict[str, Any], files: Sequence[tuple[str, bytes]]
) -> tuple[list[Outcome], float | None, bool | None]:
    """One request sent and its answer read: the outcomes, the checker's CPU clock, and whether
    it leaves now (None: it died before it answered in full; its exit status says how)."""
    assert process.stdin is not None and process.stdout is not None
    outcomes: list[Outcome] = []
    clock = None
    try:
        process.stdin.write(json.dumps(header).encode() + b"\n")
        for _, source in files:
            process.stdin.write(source)
        process.stdin.flush()
        while line := process.stdout.readline():
            fields = json.loads(line)
            if "clock" in fields:
                clock = float(fields["clock"])
            elif "leaving" in fields:
                return outcomes, clock, bool(fields["leaving"])
            else:
                outcomes.append(_outcome(fields))
    except BrokenPipeError:
        pass
    return outcomes, clock, None


def _close(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()


def _outcome(fields: dict[str, Any]) -> Outcome:
    """An Outcome from a child's line, checked (JSON, never pickle: the child has read hostile
    input with a C parser)."""
    try:
        package = fields.pop("package")
        outcome = Outcome(**fields, package=None if package is None else tuple(package))
        if outcome.verdict not in VERDICTS:
            raise ValueError(outcome.verdict)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckerFailed(f"the syntax checker wrote {str(fields)[:100]}") from exc
    return outcome


_CHECKER = _Checker()
atexit.register(_CHECKER.stop)


def check(
    language: str, files: Sequence[tuple[str, bytes]], entry: str | None = None
) -> list[Outcome]:
    """One Outcome per (path, UTF-8 source), in order; `entry` names the file whose Go
    package facts are wanted."""
    outcomes: list[Outcome] = []
    cpu = cpu_budget([len(source) for _, source in files])
    while len(outcomes) < len(files):
        found, spent = _CHECKER.run(language, files[len(outcomes) :], entry, cpu)
        outcomes += found
        cpu = max(0.0, cpu - spent)  # a new checker gets only what is left
    return outcomes


def stop() -> None:
    """End this process's checker (the next check starts another)."""
    _CHECKER.stop()
