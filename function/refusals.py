"""What `python -m function verify` refuses, one class per kind of failure, each with its own
exit code: the table a builder's operator reads (docs/deploy.md, Exit codes of verify)."""

from __future__ import annotations

from typing import ClassVar


class VerificationFailed(Exception):
    """The archive, its envelope or the key do not match; the message says which check, and
    each subclass below is one class of refusal with its own exit code."""

    exit_code: ClassVar[int] = 8
    summary: ClassVar[str] = "the archive differs from its statement"

    def __init_subclass__(cls, exit_code: int = 0, summary: str = "") -> None:
        """A class of refusal names its code and summary; a subclass of one keeps them."""
        cls.exit_code = exit_code or cls.exit_code
        cls.summary = summary or cls.summary


class UnusableInput(VerificationFailed, exit_code=2, summary="unusable input"):
    """An input of the check itself (a public key, an expected value) cannot be used."""


class MalformedEnvelope(VerificationFailed, exit_code=3, summary="the envelope is malformed"):
    pass


class SignatureRefused(VerificationFailed, exit_code=4, summary="no signature verifies"):
    pass


class MalformedStatement(VerificationFailed, exit_code=5, summary="the statement is malformed"):
    pass


class MalformedArchive(VerificationFailed, exit_code=6, summary="the archive is malformed"):
    pass


class UnsafeEntry(
    VerificationFailed, exit_code=7, summary="the archive holds an unsafe or ambiguous entry"
):
    pass


class ContentMismatch(
    VerificationFailed, exit_code=8, summary="the archive differs from its statement"
):
    pass


class NotExpected(VerificationFailed, exit_code=9, summary="not the expected context"):
    pass


FAILURES: tuple[type[VerificationFailed], ...] = (
    UnusableInput,
    MalformedEnvelope,
    SignatureRefused,
    MalformedStatement,
    MalformedArchive,
    UnsafeEntry,
    ContentMismatch,
    NotExpected,
)
"""Each class of refusal, with its own exit code (the documented table is tested against it)."""


def exit_codes() -> dict[int, str]:
    """The documented table: 0 verified, 1 a bug, 2 unusable input, then one code per class."""
    return {
        0: "verified",
        1: "an internal error (a bug: report it)",
        2: "unusable input: bad arguments, an unreadable file or object, a public key that is "
        "not Ed25519 or ECDSA P-256 PEM",
        **{failure.exit_code: failure.summary for failure in FAILURES if failure.exit_code > 2},
    }
