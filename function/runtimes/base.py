"""What every runtime provides: versions, dependency rules, syntax check and rendered files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..boundary import quote
from ..errors import FieldError, InvalidRequest
from ..settings import Settings

Dependencies = Sequence[str] | Mapping[str, str]
Pinned = tuple[tuple[str, str], ...]
"""Checked dependencies as sorted (name, specifier) pairs."""
Lock = Mapping[str, Any]
"""Checked lock data, canonical and JSON-ready: rendered into the lock file and recorded in
the provenance, from which `verify` renders the lock file again."""
MAX_LOCK_ENTRIES = 2000


@dataclass(frozen=True)
class Rendered:
    """Files the function writes into the context, next to the caller's sources."""

    dockerfile: str
    manifests: Mapping[str, str]

    def files(self) -> dict[str, str]:
        return {"Dockerfile": self.dockerfile, **self.manifests}


class Runtime(ABC):
    name: str
    aliases: tuple[str, ...] = ()
    entry_file: str
    source_suffixes: tuple[str, ...]
    versions: tuple[str, ...]
    default_version: str
    generated_files: frozenset[str]

    @abstractmethod
    def dependencies(self, deps: Dependencies, settings: Settings) -> Pinned:
        """Check the request's dependencies; return them canonical and sorted."""

    @abstractmethod
    def source_errors(self, sources: Mapping[str, str], version: str) -> list[FieldError]:
        """The first syntax error of each source file (none when it compiles), checked within
        bounded work; for the entry file, also what the runtime needs of it beyond syntax."""

    @abstractmethod
    def lock(self, text: str, deps: Pinned, settings: Settings) -> Lock:
        """Check the request's lock file against the checked dependencies (InvalidRequest)."""

    @abstractmethod
    def render(
        self, version: str, deps: Pinned, settings: Settings, lock: Lock | None = None
    ) -> Rendered:
        """Dockerfile and dependency manifest(s). Only checked values reach these files; with
        a lock, the Dockerfile installs exactly what it pins and nothing else."""

    def is_source(self, path: str) -> bool:
        return path.endswith(self.source_suffixes)

    def check_is_exact(self, version: str) -> bool:
        """Whether `source_errors` checks exactly what this version's compiler accepts."""
        return True

    def tool_file_problem(self, path: str) -> str | None:
        """Why a caller's file would be read by this runtime's toolchain as its own instructions
        (in the builder image or at start), or None. Dotfiles are refused for every runtime."""
        return None

    def pinned(self, problems: list[FieldError], checked: list[tuple[int, str, str]]) -> Pinned:
        """The end of every `dependencies`: the problems found entry by entry and a name listed
        twice among the (index, name, specifier) entries that passed are refused all at once;
        else the entries, sorted."""
        problems = problems + duplicates([(index, name) for index, name, _ in checked])
        refuse(problems, self.name)
        return tuple(sorted((name, spec) for _, name, spec in checked))


class SpecifierListRuntime(Runtime):
    """A runtime whose dependencies are one-string specifiers (pip's `requests>=2.31`, Go's
    `module@v1.2.3`): a list of them, or an object {name: rest} joined with `joiner`."""

    joiner: str

    def dependencies(self, deps: Dependencies, settings: Settings) -> Pinned:
        problems: list[FieldError] = []
        checked: list[tuple[int, str, str]] = []
        for index, spec in enumerate(as_list(deps, self.joiner)):
            outcome = self.check_specifier(spec, settings)
            if isinstance(outcome, str):
                problems.append(FieldError(outcome, field=f"dependencies[{index}]"))
            else:
                checked.append((index, *outcome))
        return self.pinned(problems, checked)

    @abstractmethod
    def check_specifier(self, spec: str, settings: Settings) -> tuple[str, str] | str:
        """One entry as (canonical name, specifier to write), or what is wrong with it."""


def as_list(deps: Dependencies, joiner: str) -> list[str]:
    if isinstance(deps, Mapping):
        return [f"{k}{joiner}{v}" for k, v in deps.items()]
    return list(deps)


def refuse(problems: list[FieldError], runtime: str) -> None:
    if problems:
        raise InvalidRequest(
            f"{len(problems)} invalid {runtime} dependenc{'y' if len(problems) == 1 else 'ies'}: "
            f"{problems[0].field}: {problems[0].message}",
            problems,
        )


def duplicates(names: list[tuple[int, str]]) -> list[FieldError]:
    seen: dict[str, int] = {}
    problems = []
    for index, name in names:
        if name in seen:
            problems.append(
                FieldError(
                    f"{quote(name)} is listed twice (also dependencies[{seen[name]}]); keep one entry",
                    field=f"dependencies[{index}]",
                )
            )
        seen.setdefault(name, index)
    return problems


def lock_error(problem: str, runtime: str, line: int | None = None) -> InvalidRequest:
    where = f"line {line}: " if line else ""
    message = f"lockFile: {where}{problem}"
    return InvalidRequest(
        f"{message} (the {runtime} lock file; see README, Locked dependencies)",
        [FieldError(message, field="lockFile", line=line)],
    )
