"""Go: go.mod from module@version, multi-stage build to a static binary in a minimal image."""

from __future__ import annotations

import re

import tree_sitter_go

from ..errors import FieldError
from ..settings import Settings
from .base import (
    MAX_LOCK_ENTRIES,
    Dependencies,
    Lock,
    Pinned,
    Rendered,
    Runtime,
    as_list,
    duplicates,
    lock_error,
    refuse,
)
from .treesitter import TreeSitterGrammar

_GRAMMAR = TreeSitterGrammar(tree_sitter_go.language(), "Go")
# golang.org/x/mod/module.CheckPath: a dotted lowercase host first, then path elements.
_FIRST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_ELEMENT = re.compile(r"^[A-Za-z0-9_~-]([A-Za-z0-9._~-]*[A-Za-z0-9_~-])?$")
_SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


# A go.sum line: module, version (or version/go.mod) and the h1: dirhash (base64 sha256).
_SUM_LINE = re.compile(
    r"(?P<module>\S{1,300}) (?P<version>v\S{1,120}?)(?P<gomod>/go\.mod)? (?P<hash>h1:[A-Za-z0-9+/]{43}=)"
)


def module_path_problem(path: str) -> str | None:
    if len(path) > 300:
        return "is longer than 300 characters"
    elements = path.split("/")
    if not _FIRST.match(elements[0]):
        return "must start with a lowercase host name containing a dot, e.g. 'github.com/org/repo'"
    bad = [e for e in elements[1:] if not _ELEMENT.match(e)]
    if bad:
        return f"has an invalid path element {bad[0]!r} (letters, digits, '-', '.', '_', '~')"
    return None


class GoRuntime(Runtime):
    name = "go"
    aliases = ("golang",)
    entry_file = "remediation.go"
    source_suffixes = (".go",)
    versions = ("1.25", "1.26", "1.27")
    default_version = "1.26"
    generated_files = frozenset({"Dockerfile", "go.mod", "go.sum"})

    def dependencies(self, deps: Dependencies, settings: Settings) -> Pinned:
        problems: list[FieldError] = []
        pairs: list[tuple[int, str, str]] = []
        for index, spec in enumerate(as_list(deps, "@")):
            where = f"dependencies[{index}]"
            module, at, version = spec.strip().rpartition("@")
            if not at:
                problems.append(
                    FieldError(
                        f"{spec!r} needs a version: write module@version, e.g. "
                        "'github.com/google/uuid@v1.6.0'",
                        field=where,
                    )
                )
                continue
            problem = module_path_problem(module)
            if problem:
                problems.append(FieldError(f"module path {module!r} {problem}", field=where))
                continue
            if not _SEMVER.match(version):
                problems.append(
                    FieldError(
                        f"version {version!r} of {module} is not a semantic version like v1.2.3 "
                        "(branches, 'latest' and queries are not reproducible)",
                        field=where,
                    )
                )
                continue
            pairs.append((index, module, version))
        problems += duplicates([(i, m) for i, m, _ in pairs])
        refuse(problems, self.name)
        return tuple(sorted((m, v) for _, m, v in pairs))

    def lock(self, text: str, deps: Pinned, settings: Settings) -> Lock:
        """A go.sum: `module version h1:…` and `module version/go.mod h1:…` lines. Every
        declared module needs both; with -mod=readonly the build then fails on any module
        whose sum is missing or differs, so `dependencies` must list every module the build
        needs (what `go mod tidy` puts in go.mod)."""
        sums: dict[tuple[str, str], str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            match = _SUM_LINE.fullmatch(line)
            if match is None:
                raise lock_error(
                    "is not a go.sum line 'module version[/go.mod] h1:<base64>'", self.name, number
                )
            module, version = match["module"], match["version"]
            problem = module_path_problem(module)
            if problem or not _SEMVER.match(version):
                raise lock_error(
                    f"{module[:80]!r} {version[:40]!r}: "
                    + (f"the module path {problem}" if problem else "not a semantic version"),
                    self.name,
                    number,
                )
            key = (module, version + (match["gomod"] or ""))
            if sums.setdefault(key, match["hash"]) != match["hash"]:
                raise lock_error(f"two different sums for {module} {key[1]}", self.name, number)
            if len(sums) > MAX_LOCK_ENTRIES:
                raise lock_error(f"more than {MAX_LOCK_ENTRIES} lines", self.name, number)
        for module, version in deps:
            for suffix in ("", "/go.mod"):
                if (module, version + suffix) not in sums:
                    raise lock_error(
                        f"has no line for {module} {version}{suffix}; run `go mod tidy` with "
                        "the same go.mod",
                        self.name,
                    )
        return {"sums": [f"{m} {v} {h}" for (m, v), h in sorted(sums.items())]}

    def source_errors(self, path: str, text: str, version: str) -> list[FieldError]:
        parsed = _GRAMMAR.parse(text)
        errors = _GRAMMAR.first_error(path, parsed)
        if errors or path != self.entry_file:
            return errors
        root = parsed.root
        package = next((c for c in root.children if c.type == "package_clause"), None)
        name = (
            parsed.text(package.named_children[0]) if package and package.named_children else None
        )
        has_main = any(
            c.type == "function_declaration"
            and (node := c.child_by_field_name("name")) is not None
            and parsed.text(node) == b"main"
            for c in root.children
        )
        if name == b"main" and has_main:
            return []
        return [
            FieldError(
                "the entry file must declare 'package main' with a 'func main()' so that it "
                "builds into a command",
                file=path,
                line=1 if package is None else package.start_point[0] + 1,
                column=1,
            )
        ]

    def render(
        self, version: str, deps: Pinned, settings: Settings, lock: Lock | None = None
    ) -> Rendered:
        requires = "".join(f"\t{m} {v}\n" for m, v in deps)
        go_mod = f"module remediation\n\ngo {version}\n" + (
            f"\nrequire (\n{requires})\n" if deps else ""
        )
        # Locked: go.sum is the truth and nothing may change it (-mod=readonly); else the build
        # records the sums from the checksum database (-mod=mod).
        mode = "readonly" if lock else "mod"
        manifests = {"go.mod": go_mod}
        if lock:
            manifests["go.sum"] = "".join(f"{line}\n" for line in lock["sums"])
        dockerfile = (
            f"FROM {settings.image(settings.go_build_image, version)} AS build\n"
            "ENV CGO_ENABLED=0 \\\n"
            f"    GOFLAGS=-mod={mode} \\\n"
            "    GOTOOLCHAIN=local\n"
            "WORKDIR /src\n"
            f"COPY {'go.mod go.sum' if lock else 'go.mod'} ./\n"
            "RUN go mod download\n"
            "COPY . ./\n"
            f"RUN go build {'-mod=readonly ' if lock else ''}"
            '-trimpath -ldflags="-s -w" -o /out/remediation .\n'
            "\n"
            f"FROM {settings.image(settings.go_runtime_image, version)}\n"
            "COPY --from=build /out/remediation /remediation\n"
            "USER 65532:65532\n"
            'ENTRYPOINT ["/remediation"]\n'
        )
        return Rendered(dockerfile, manifests)


RUNTIME = GoRuntime()
