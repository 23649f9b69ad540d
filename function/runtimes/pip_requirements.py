"""pip's requirements files: what its reader takes from a line we write (a dependency) and a
lock file in hash-checking mode, as `pip-compile --generate-hashes` or `uv pip compile
--generate-hashes` write it, read as pip installs it in the image."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..boundary import quote
from ..errors import InvalidRequest
from . import markers
from .base import MAX_LOCK_ENTRIES, Lock, Pinned, lock_error

PIP_LINE = re.compile(r"[ -~]+")
"""A requirement line: printable ASCII. pip's requirements-file reader splits lines on every
Unicode line break (str.splitlines: form feed, vertical tab, U+2028, ...), which `packaging`
accepts inside markers."""
_PIP_COMMENT = re.compile(r"(?:^|\s)#")
_PIP_OPTION = re.compile(r"\s-")
# pip's hash-checking mode: `--hash=<algorithm>:<hex>`, the algorithms pip accepts.
_HASH = re.compile(r"--hash[= ](sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
_EXACT = re.compile(r"==[0-9A-Za-z.+!-]{1,64}")


def line_problem(line: str) -> str | None:
    """What pip's requirements-file reader would read differently from `packaging` in the line
    we write: it cuts comments (' #'), reads ' -' as the start of options, joins a line ending
    in '\\' with the next, and expands ${VARIABLE} from its environment."""
    if _PIP_COMMENT.search(line):
        return "has ' #', where pip's requirements file starts a comment; leave it out"
    if _PIP_OPTION.search(line):
        return "has ' -', where pip's requirements file starts its options; leave it out"
    if "${" in line:
        return "has '${', which pip replaces from its environment; leave it out"
    if line.endswith("\\"):
        return "ends in a backslash, which joins it with the next line in a requirements file"
    return None


def _refused(problem: str, line: int | None = None) -> InvalidRequest:
    return lock_error(problem, "python", line)


@dataclass(frozen=True)
class _Pin:
    """One requirement of the lock: its line, its marker and the entry the lock keeps."""

    line: int
    marker: Marker | None
    entry: dict[str, object]


def read_lock(text: str, deps: Pinned, version: str) -> Lock:
    """`name==version` lines (extras and markers allowed) with one or more `--hash=sha256:…`;
    comments and line continuations; no other option. Every declared dependency must be
    pinned there to a version its specifier admits, by a line pip installs in the `version`
    image wherever it would install the dependency (its marker, if any, surely true there:
    markers.py); the other entries are what they pull in (--no-deps installs nothing else)."""
    pins: dict[str, _Pin] = {}
    for line, logical in _logical_lines(text):
        pin = _pin(logical, line)
        name = str(pin.entry["name"])
        if name in pins:
            raise _refused(f"{quote(name)} is pinned twice", line)
        pins[name] = pin
        if len(pins) > MAX_LOCK_ENTRIES:
            raise _refused(f"more than {MAX_LOCK_ENTRIES} entries", line)
    _check_declared(deps, pins, version)
    return {"requirements": [pins[name].entry for name in sorted(pins)]}


def _pin(logical: str, line: int) -> _Pin:
    requirement_text, _, options = logical.partition(" --")
    hashes = _hashes(f"--{options}" if options else "", line)
    requirement = _requirement(requirement_text.strip(), line)
    version = _exact_version(requirement, line)
    if not hashes:
        raise _refused(
            f"{requirement.name}=={version} has no --hash=sha256:…; generate the lock with "
            "`pip-compile --generate-hashes`",
            line,
        )
    entry: dict[str, object] = {
        "name": canonicalize_name(requirement.name),
        "requirement": str(requirement),
        "version": version,
        "hashes": sorted(set(hashes)),
    }
    return _Pin(line, requirement.marker, entry)


def _hashes(options: str, line: int) -> list[str]:
    hashes: list[str] = _HASH.findall(options)
    if _HASH.sub("", options).strip():
        raise _refused(f"only --hash options are allowed; found {quote(options.split()[0])}", line)
    return hashes


def _requirement(text: str, line: int) -> Requirement:
    """A requirement that pip reads as `packaging` does, with PEP 508 markers only."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise _refused(f"{quote(text)} is not a requirement", line) from None
    written = str(requirement)
    problem = (
        "must be printable ASCII" if PIP_LINE.fullmatch(written) is None else line_problem(written)
    )
    if problem:
        raise _refused(f"{quote(written)} {problem}", line)
    unknown = set(markers.names(requirement.marker)) - markers.PEP_508
    if unknown:
        raise _refused(
            f"the marker of {quote(written)} names {quote(min(unknown))}, which is not a "
            "PEP 508 environment marker (the pip of the image may not know it)",
            line,
        )
    return requirement


def _exact_version(requirement: Requirement, line: int) -> str:
    pins = list(requirement.specifier)
    if (
        requirement.url
        or len(pins) != 1
        or pins[0].operator != "=="
        or not _EXACT.fullmatch(f"=={pins[0].version}")
        or "*" in pins[0].version
    ):
        raise _refused(
            f"{quote(requirement.name)} must be pinned with == to one version "
            "(no ranges, wildcards or URLs)",
            line,
        )
    return pins[0].version


def _check_declared(deps: Pinned, pins: Mapping[str, _Pin], version: str) -> None:
    budget = markers.MAX_CASES
    for declared_name, spec in deps:
        declared = Requirement(spec)
        pin = pins.get(declared_name)
        if pin is None:
            raise _refused(f"the dependency {quote(spec)} is not in the lock file")
        if not declared.specifier.contains(str(pin.entry["version"]), prereleases=True):
            raise _refused(
                f"the lock pins {declared_name}=={pin.entry['version']}, which {quote(spec)} "
                "does not admit"
            )
        verdict = markers.implies(declared.marker, pin.marker, version, budget)
        budget -= verdict.cases
        if not verdict.surely:
            raise _refused(
                f"the pin of {quote(spec)}, {quote(str(pin.entry['requirement']), 120)}, may "
                f"not be installed: its marker {verdict.where}, and pip ignores such a line "
                "(the dependency would not be installed at all); lock it for "
                f"runtimeVersion {version} on Linux with no marker that can exclude it",
                pin.line,
            )


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each requirement: comments dropped, continuations joined."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(part.strip() for part in pending).strip()
        pending = []
        if joined:
            logical.append((start, joined))
    if pending and " ".join(pending).strip():
        logical.append((start, " ".join(p.strip() for p in pending).strip()))
    return logical
