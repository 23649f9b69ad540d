"""A request full of mistakes or findings gets a short answer and a short log line: at most
`MAX_ERRORS` errors (the rest counted in `errorsOmitted`), and checks that stop collecting.

Speed is not tested here (no timing on a shared machine): bench/worst_case.py measures it.
The bounds that make it linear are: the first findings plus a count, and a rule that stops
at `RULE_CAP` matches in a file.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from function import credentials
from function.errors import MAX_ERRORS, MESSAGE_MAX, FieldError, InvalidSource
from tests.conftest import StartServer
from tests.support.fake_credentials import UPPER, random

REPLY_MAX = 16 * 1024
LOG_LINE_MAX = 8 * 1024


def aws_key_lines(count: int) -> str:
    return "".join(f'KEY_{i} = "AKIA{random(UPPER, 16)}"\n' for i in range(count))


def test_a_scan_lists_the_first_findings_in_order_and_counts_the_rest() -> None:
    files = {f"f{n:02}.py": aws_key_lines(30) for n in range(5)}
    found = credentials.scan(files)
    assert len(found.findings) == credentials.MAX_FINDINGS
    assert [(f.file, f.line) for f in found.findings] == [("f00.py", n) for n in range(1, 21)]
    assert (found.total, found.omitted, found.complete) == (150, 130, True)
    assert found.count_text() == "150 findings"


def test_a_rule_stops_at_its_cap_and_says_the_count_is_a_floor() -> None:
    found = credentials.scan({"keys.py": aws_key_lines(credentials.RULE_CAP + 500)})
    assert len(found.findings) == credentials.MAX_FINDINGS
    assert found.complete is False and found.total == credentials.RULE_CAP
    assert found.count_text() == f"at least {credentials.RULE_CAP} findings"


def test_one_long_line_of_findings_is_one_finding() -> None:
    line = " ".join(f"AKIA{random(UPPER, 16)}" for _ in range(5000))
    found = credentials.scan({"one.py": f"x = '{line}'\n"})
    assert [(f.line, f.kind) for f in found.findings] == [(1, "AWS access key id")]


def test_a_failure_keeps_the_first_errors_and_counts_the_rest() -> None:
    errors = [FieldError("x" * 5000, field=f"files.f{n}.py") for n in range(500)]
    failure = InvalidSource("y" * 100_000, errors, omitted=7)
    assert len(failure.errors) == MAX_ERRORS and failure.omitted == 500 - MAX_ERRORS + 7
    assert len(failure.message) <= MESSAGE_MAX
    assert all(len(e.message) <= MESSAGE_MAX for e in failure.errors)


def _failure_log(server: Any) -> dict[str, Any]:
    (line,) = [r for r in server.log_lines() if r.get("message") == "buildcontext.failed"]
    return line  # type: ignore[no-any-return]


def _check_bounded(server: Any, reply: Any, total: int) -> None:
    body = json.dumps(reply.data)
    assert len(body) < REPLY_MAX, len(body)
    assert len(reply.data["errors"]) == MAX_ERRORS
    assert reply.data["errorsOmitted"] == total - MAX_ERRORS
    failed = [line for line in server.log().splitlines() if "buildcontext.failed" in line]
    assert len(failed) == 1 and len(failed[0]) < LOG_LINE_MAX, len(failed[0])
    assert _failure_log(server)["errorsOmitted"] == total - MAX_ERRORS
    assert len(server.log()) < 64 * 1024


def test_a_source_full_of_keys_is_refused_with_a_short_reply_and_log(
    start_server: StartServer,
) -> None:
    """What issue 21 found: 1 MB of AWS-key-shaped lines answered with 47,000 errors in a
    14.7 MB reply and a 3.8 MB log line."""
    server = start_server()
    source = aws_key_lines(900)
    reply = server.send({"lambdaFunction": "keys", "sourceCode": source}, timeout=120)
    assert reply.type == "buildcontext.failed" and reply.data["reason"] == "InvalidSource"
    _check_bounded(server, reply, 900)
    assert "900 findings, the first 20 listed" in reply.data["message"]
    assert [e["line"] for e in reply.data["errors"]] == list(range(1, 21))


def test_warn_lists_the_first_findings_and_counts_the_rest(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_SECRET_SCAN="warn")
    reply = server.send({"lambdaFunction": "keys", "sourceCode": aws_key_lines(300)})
    assert reply.type == "buildcontext.created", reply
    assert len(reply.data["secretWarnings"]) == MAX_ERRORS
    assert reply.data["secretWarningsOmitted"] == 300 - MAX_ERRORS
    warned = [r for r in server.log_lines() if r.get("message", "").startswith("credential")]
    assert len(warned) == MAX_ERRORS + 1
    assert warned[-1]["omitted"] == 300 - MAX_ERRORS


# (request, how many problems it holds): each check's mistakes, many at once
MANY_PROBLEMS: dict[str, tuple[dict[str, Any], int]] = {
    "paths": (
        {"files": {f"bad path {n}.py": "x = 1\n" for n in range(150)}},
        150,
    ),
    "syntax": (
        {"files": {f"lib/m{n}.py": "def f(:\n" for n in range(150)}},
        150,
    ),
    "dependencies": (
        {"dependencies": [f"pkg{n} @ https://example.com/p{n}.whl" for n in range(100)]},
        100,
    ),
    "credentials in many files": (
        {"files": {f"lib/k{n}.py": aws_key_lines(2) for n in range(60)}},
        120,
    ),
}


@pytest.mark.parametrize("case", sorted(MANY_PROBLEMS))
def test_every_check_answers_many_problems_with_a_bounded_reply(
    start_server: StartServer, case: str
) -> None:
    server = start_server()
    extra, total = MANY_PROBLEMS[case]
    reply = server.send({"lambdaFunction": "many", "sourceCode": "print(1)\n", **extra})
    assert reply.type == "buildcontext.failed", reply
    _check_bounded(server, reply, total)
