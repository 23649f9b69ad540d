"""Go: go.mod from module@version, multi-stage build to a static binary in a minimal image."""

from __future__ import annotations

import re

import tree_sitter_go

from ..errors import FieldError
from ..settings import Settings
from .base import Dependencies, Pinned, Rendered, Runtime, as_list, duplicates, refuse
from .treesitter import TreeSitterGrammar

_GRAMMAR = TreeSitterGrammar(tree_sitter_go.language(), "Go")
# golang.org/x/mod/module.CheckPath: a dotted lowercase host first, then path elements.
_FIRST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_ELEMENT = re.compile(r"^[A-Za-z0-9_~-]([A-Za-z0-9._~-]*[A-Za-z0-9_~-])?$")
_SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
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

    def render(self, version: str, deps: Pinned, settings: Settings) -> Rendered:
        requires = "".join(f"\t{m} {v}\n" for m, v in deps)
        go_mod = f"module remediation\n\ngo {version}\n" + (
            f"\nrequire (\n{requires})\n" if deps else ""
        )
        dockerfile = (
            f"FROM {settings.image(settings.go_build_image, version)} AS build\n"
            "ENV CGO_ENABLED=0 \\\n"
            "    GOFLAGS=-mod=mod \\\n"
            "    GOTOOLCHAIN=local\n"
            "WORKDIR /src\n"
            "COPY go.mod ./\n"
            "RUN go mod download\n"
            "COPY . ./\n"
            'RUN go build -trimpath -ldflags="-s -w" -o /out/remediation .\n'
            "\n"
            f"FROM {settings.image(settings.go_runtime_image, version)}\n"
            "COPY --from=build /out/remediation /remediation\n"
            "USER 65532:65532\n"
            'ENTRYPOINT ["/remediation"]\n'
        )
        return Rendered(dockerfile, {"go.mod": go_mod})


RUNTIME = GoRuntime()
