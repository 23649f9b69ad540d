"""Whether pip, in the image a context is built in, installs a requirement line: its environment
marker (PEP 508) judged before the build, for the request's Python version on Debian Linux.

pip evaluates a requirements-file line's marker against the interpreter it runs in, with no
extra, and ignores the line when it is false ("Ignoring requests: markers ... don't match").
Known when the request arrives: `python_version` and what every Linux CPython image shares
(`os_name`, `sys_platform`, `platform_system`, `platform_python_implementation`,
`implementation_name`). Not known: the image's patch release (`python_full_version`,
`implementation_version`: the image tag follows the minor version), the builder's machine
(`platform_machine`) and its kernel (`platform_release`, `platform_version`). A marker is
evaluated for every combination of candidate values of the unknowns it names: each literal it
compares with, one value on either side of it, and values it does not name, so no comparison
can tell two untried values apart. It holds "surely" only when it holds for every combination.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.version import InvalidVersion, Version

KNOWN_LINUX = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "extra": "",
}
"""The values every Linux CPython image has; `extra` is empty for a requirements-file line."""
PATCH = ("python_full_version", "implementation_version")
"""One unknown: the image's patch release, which both name (CPython)."""
MACHINES = ("x86_64", "aarch64", "armv7l", "i686", "ppc64le", "s390x", "riscv64")
"""What `platform_machine` says on the architectures the Python images are built for."""
KERNEL = ("platform_release", "platform_version")
PEP_508 = frozenset({"python_version", "platform_machine", *KNOWN_LINUX, *PATCH, *KERNEL})
"""The marker variables every pip knows; newer ones (`extras`, `dependency_groups`, for lock
files) are unknown to the pip of an older image."""
MAX_CASES = 4096
"""Environments tried for all the markers of one lock (about 25 µs each): the work is bounded
whatever the caller writes."""
_UNNAMED = ("", "unknown")


@dataclass(frozen=True)
class Verdict:
    """Whether a marker holds in every environment the build may run in; if not, `where`
    completes "its marker ...": one environment where it does not, or why it cannot be told.
    `cases`: how many environments were tried."""

    surely: bool
    where: str = ""
    cases: int = 0


Names = dict[str, set[str]]
"""Each variable a marker names, with the literals it is compared with."""


def names(marker: Marker | None) -> Names:
    """packaging keeps a marker's parsed tree in `_markers` (nested lists of (lhs, op, rhs)
    nodes and 'and'/'or'), the same since packaging 22."""
    found: Names = {}

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, tuple):
            sides = [(type(side).__name__ == "Variable", str(side)) for side in node[::2]]
            literals = {text for variable, text in sides if not variable}
            for variable, text in sides:
                if variable:
                    found.setdefault(text, set()).update(literals)

    if marker is not None:
        walk(marker._markers)
    return found


def implies(
    condition: Marker | None, marker: Marker | None, python_version: str, budget: int = MAX_CASES
) -> Verdict:
    """Whether `marker` holds wherever `condition` does (no condition: everywhere), for pip in
    the `python_version` image on Linux, trying at most `budget` environments. A marker pip
    could not evaluate does not hold; a condition it could not evaluate holds (the
    conservative side of each)."""
    if marker is None:
        return Verdict(True)
    named = names(marker)
    for variable, literals in names(condition).items():
        named.setdefault(variable, set()).update(literals)
    unknown = sorted(set(named) - PEP_508)
    if unknown:
        return Verdict(False, f"names {unknown[0]!r}, which is not a PEP 508 marker variable")
    axes = _axes(named, python_version)
    cases = math.prod(len(values) for _, values in axes)
    if cases > budget:
        return Verdict(
            False, f"needs {cases} cases to judge, over the {budget} left of {MAX_CASES} a lock"
        )
    return _judge(condition, marker, axes, python_version, cases)


def _judge(
    condition: Marker | None,
    marker: Marker,
    axes: list[tuple[str, tuple[str, ...]]],
    python_version: str,
    cases: int,
) -> Verdict:
    """Every environment the axes make, until one where `condition` holds and `marker` not."""
    for environment in _environments(axes, python_version):
        if _holds(condition, environment, default=True) and not _holds(
            marker, environment, default=False
        ):
            shown = [PATCH[0] if name == "patch" else name for name, _ in axes]
            varied = {name: environment[name] for name in shown}
            return Verdict(False, _describe(varied, python_version), cases)
    return Verdict(True, cases=cases)


def _axes(named: Names, python_version: str) -> list[tuple[str, tuple[str, ...]]]:
    axes: list[tuple[str, tuple[str, ...]]] = []
    if named.keys() & set(PATCH):
        literals = set().union(*(named.get(name, set()) for name in PATCH))
        axes.append(("patch", _patches(literals, python_version)))
    if "platform_machine" in named:
        around = _around(named["platform_machine"])
        axes.append(("platform_machine", tuple(dict.fromkeys((*MACHINES, *around)))))
    for name in KERNEL:
        if name in named:
            axes.append((name, tuple(dict.fromkeys(_around(named[name])))))
    return axes


def _patches(literals: set[str], python_version: str) -> tuple[str, ...]:
    """Patch releases of `python_version` on both sides of every version of it the marker
    names, and the first: every stretch between them compares alike."""
    minor = tuple(int(part) for part in python_version.split("."))
    patches = {0}
    for literal in literals:
        try:
            release = Version(literal).release
        except InvalidVersion:
            continue
        if release[:2] == minor:
            patch = release[2] if len(release) > 2 else 0
            patches.update(p for p in (patch - 1, patch, patch + 1) if p >= 0)
    return tuple(f"{python_version}.{p}" for p in sorted(patches))


def _around(literals: set[str]) -> Iterator[str]:
    """Each literal, a value just below and just above it (as a version and as a string), the
    literals joined (for `in`), and values none of them names."""
    for literal in sorted(literals):
        yield literal
        yield literal + ".1"
        yield literal[:-1]
        try:
            release = Version(literal).release
        except InvalidVersion:
            continue
        if release and release[0] > 0:
            yield ".".join(str(part) for part in (release[0] - 1, *release[1:]))
    if literals:
        yield " ".join(sorted(literals))
    yield from _UNNAMED


def _environments(
    axes: list[tuple[str, tuple[str, ...]]], python_version: str
) -> Iterator[dict[str, str]]:
    base = {
        **KNOWN_LINUX,
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_version": f"{python_version}.0",
        "platform_machine": MACHINES[0],
        "platform_release": "",
        "platform_version": "",
    }
    for values in itertools.product(*(values for _, values in axes)):
        environment = dict(base)
        for (name, _), value in zip(axes, values, strict=True):
            if name == "patch":
                environment["python_full_version"] = environment["implementation_version"] = value
            else:
                environment[name] = value
        yield environment


def _holds(marker: Marker | None, environment: dict[str, str], default: bool) -> bool:
    if marker is None:
        return True
    try:
        return marker.evaluate(environment)
    except Exception:  # an undefined comparison or name: pip would fail or differ
        return default


def _describe(varied: dict[str, str], python_version: str) -> str:
    if not varied:
        return f"is false for Python {python_version} on Linux"
    where = ", ".join(f"{name} {value!r}" for name, value in varied.items())
    return f"is false for Python {python_version} on Linux with {where}"
