"""Go: go.mod from module@version, multi-stage build to a static binary in a minimal image."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..boundary import quote
from ..errors import FieldError
from .base import (
    GENERATED_FOR_EVERY_RUNTIME,
    MAX_LOCK_ENTRIES,
    BaseImage,
    Lock,
    Pinned,
    Rendered,
    RuntimeSettings,
    SpecifierListRuntime,
    lock_error,
    with_build_ca,
)
from .treesitter import TreeSitterGrammar

_GRAMMAR = TreeSitterGrammar("go", "Go")
# golang.org/x/mod/module.CheckPath: a dotted lowercase host first, then path elements.
_FIRST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_ELEMENT = re.compile(r"[A-Za-z0-9_~-](?:[A-Za-z0-9._~-]*[A-Za-z0-9_~-])?")
_WINDOWS_RESERVED = re.compile(r"(?i)(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?")
_SHORT_NAME = re.compile(r".*~[0-9]+")
# module.CheckPathMajor: a major version suffix /vN (N >= 2), or .vN on gopkg.in.
_PATH_MAJOR = re.compile(r".*/v(?P<major>[1-9][0-9]*)")
_BAD_PATH_MAJOR = re.compile(r".*/v(?:0|1|0[0-9]+)")
_GOPKG = re.compile(r"gopkg\.in/(?:[^/]+/)?[^/.]+\.v(?P<major>0|[1-9][0-9]*)(?:-unstable)?")
_SEMVER = re.compile(
    r"v(?P<major>0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(?P<build>\+incompatible)?"
)
_MAX_PATH = 300


# A go.sum line: module, version (or version/go.mod) and the h1: dirhash (base64 sha256).
_SUM_LINE = re.compile(
    r"(?P<module>\S{1,300}) (?P<version>v\S{1,120}?)(?P<gomod>/go\.mod)? (?P<hash>h1:[A-Za-z0-9+/]{43}=)"
)


def module_path_problem(path: str) -> str | None:
    if len(path) > _MAX_PATH:
        return f"is longer than {_MAX_PATH} characters"
    problem = _elements_problem(path.split("/"))
    if problem:
        return problem
    if _BAD_PATH_MAJOR.fullmatch(path):
        return "ends in /v0 or /v1: only /v2 and above are major version suffixes; drop it"
    if path.startswith("gopkg.in/") and _GOPKG.fullmatch(path) is None:
        return "is a gopkg.in path without its .vN suffix, e.g. 'gopkg.in/yaml.v3'"
    return None


def _elements_problem(elements: list[str]) -> str | None:
    if _FIRST.fullmatch(elements[0]) is None:
        return "must start with a lowercase host name containing a dot, e.g. 'github.com/org/repo'"
    bad = [e for e in elements[1:] if _ELEMENT.fullmatch(e) is None]
    if bad:
        return f"has an invalid path element {quote(bad[0])} (letters, digits, '-', '.', '_', '~')"
    reserved = [e for e in elements if _WINDOWS_RESERVED.fullmatch(e) or _SHORT_NAME.fullmatch(e)]
    if reserved:
        return (
            f"has the element {quote(reserved[0])}, which the go command refuses (a Windows name)"
        )
    return None


def version_problem(module: str, version: str) -> str | None:
    """golang.org/x/mod/module.Check: a canonical semantic version whose major matches the
    path's major version suffix (no suffix: v0 or v1, or vN+incompatible)."""
    parsed = _SEMVER.fullmatch(version)
    if parsed is None:
        return (
            f"version {quote(version)} of {module} is not a semantic version like v1.2.3 "
            "(branches, 'latest', queries and build metadata are not reproducible)"
        )
    major = int(parsed["major"])
    incompatible = parsed["build"] is not None
    suffix = _GOPKG.fullmatch(module) or _PATH_MAJOR.fullmatch(module)
    if suffix is not None:
        wanted = int(suffix["major"])
        if major != wanted or incompatible:
            return (
                f"version {version} does not match the major version suffix of {module}: "
                f"use a v{wanted}.x.y version"
            )
        return None
    if major >= 2 and not incompatible:
        return (
            f"version {version} is major {major}, but the module path {module} has no /v{major} "
            f"suffix: write {module}/v{major}@{version} (or {version}+incompatible for a "
            "module without go.mod)"
        )
    if major < 2 and incompatible:
        return f"version {version}: +incompatible is only for major versions 2 and above"
    return None


BUILD_IMAGE = BaseImage("go_build", "golang:{version}-bookworm", "Go build-stage image.")
RUNTIME_IMAGE = BaseImage(
    "go_runtime", "gcr.io/distroless/static-debian12:nonroot", "Go final-stage image."
)


class GoRuntime(SpecifierListRuntime):
    name = "go"
    aliases = ("golang",)
    entry_file = "remediation.go"
    source_suffixes = (".go",)
    versions = ("1.25", "1.26", "1.27")
    default_version = "1.26"
    generated_files = GENERATED_FOR_EVERY_RUNTIME | {"go.mod", "go.sum"}
    images = (BUILD_IMAGE, RUNTIME_IMAGE)
    dependencies_description = "module@version (or {module: version})"
    lock_description = "go.sum"
    dependency_example = "github.com/google/uuid@v1.6.0"
    joiner = "@"

    def check_specifier(self, spec: str, settings: RuntimeSettings) -> tuple[str, str] | str:
        module, at, version = spec.rpartition("@")
        if not at:
            return (
                f"{quote(spec)} needs a version: write module@version, e.g. "
                "'github.com/google/uuid@v1.6.0'"
            )
        problem = module_path_problem(module)
        if problem:
            return f"module path {quote(module)} {problem}"
        return version_problem(module, version) or (module, version)

    def lock(self, text: str, deps: Pinned, settings: RuntimeSettings, version: str) -> Lock:
        """A go.sum: `module version h1:…` and `module version/go.mod h1:…` lines. Every
        declared module needs both; with -mod=readonly the build then fails on any module
        whose sum is missing or differs, so `dependencies` must list every module the build
        needs (what `go mod tidy` puts in go.mod)."""
        sums = _sums(text)
        for module, version in deps:
            for suffix in ("", "/go.mod"):
                if (module, version + suffix) not in sums:
                    raise lock_error(
                        f"has no line for {module} {version}{suffix}; run `go mod tidy` with "
                        "the same go.mod",
                        self.name,
                    )
        return {"sums": [f"{m} {v} {h}" for (m, v), h in sorted(sums.items())]}

    def source_errors(self, sources: Mapping[str, str], version: str) -> list[FieldError]:
        problems: list[FieldError] = []
        for path, outcome in _GRAMMAR.check(sources, entry=self.entry_file):
            errors = _GRAMMAR.errors(path, outcome)
            if (
                not errors
                and path == self.entry_file
                and not (outcome.package and outcome.package[0] == "main" and outcome.has_main)
            ):
                errors = [
                    FieldError(
                        "the entry file must declare 'package main' with a 'func main()' so "
                        "that it builds into a command",
                        file=path,
                        line=outcome.package[1] if outcome.package else 1,
                        column=1,
                    )
                ]
            problems += errors
        return problems

    def tool_file_problem(self, path: str) -> str | None:
        name = path.rsplit("/", 1)[-1]
        if path in ("go.work", "go.work.sum"):
            return (
                "is a Go workspace file: the go command would build the workspace instead of "
                "the generated go.mod (and refuses -mod=mod)"
            )
        if "/" in path and name in ("go.mod", "go.sum"):
            return "is a nested Go module file: its folder would leave the remediation module"
        if path.split("/", 1)[0] == "vendor":
            return "is in vendor/, which the go command reads instead of the generated go.mod"
        return None

    def render(
        self,
        version: str,
        deps: Pinned,
        settings: RuntimeSettings,
        lock: Lock | None = None,
        sources: Mapping[str, str] | None = None,
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
            f"FROM {settings.image(BUILD_IMAGE, version)} AS build\n"
            "ENV CGO_ENABLED=0 \\\n"
            f"    GOFLAGS=-mod={mode} \\\n"
            "    GOTOOLCHAIN=local\n"
            "WORKDIR /src\n"
            f"COPY {'go.mod go.sum' if lock else 'go.mod'} ./\n"
            # SSL_CERT_FILE replaces Go's CA file; it still reads the image's CA folder.
            + with_build_ca("SSL_CERT_FILE", "go mod download")
            + "COPY . ./\n"
            f"RUN go build {'-mod=readonly ' if lock else ''}"
            '-trimpath -ldflags="-s -w" -o /out/remediation .\n'
            "\n"
            f"FROM {settings.image(RUNTIME_IMAGE, version)}\n"
            "COPY --from=build /out/remediation /remediation\n"
            "USER 65532:65532\n"
            'ENTRYPOINT ["/remediation"]\n'
        )
        return Rendered(dockerfile, manifests)


def _sums(text: str) -> dict[tuple[str, str], str]:
    """The go.sum's lines, checked: (module, version[/go.mod]) to its h1: hash."""
    sums: dict[tuple[str, str], str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _SUM_LINE.fullmatch(line)
        if match is None:
            raise lock_error(
                "is not a go.sum line 'module version[/go.mod] h1:<base64>'", "go", number
            )
        module, version = match["module"], match["version"]
        problem = module_path_problem(module)
        if problem:
            raise lock_error(f"the module path {quote(module)} {problem}", "go", number)
        problem = version_problem(module, version)
        if problem:
            raise lock_error(problem, "go", number)
        key = (module, version + (match["gomod"] or ""))
        if sums.setdefault(key, match["hash"]) != match["hash"]:
            raise lock_error(f"two different sums for {module} {key[1]}", "go", number)
        if len(sums) > MAX_LOCK_ENTRIES:
            raise lock_error(f"more than {MAX_LOCK_ENTRIES} lines", "go", number)
    return sums


RUNTIME = GoRuntime()
