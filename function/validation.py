"""Checks on the untrusted request, all before anything is stored (the runtime renders its
files first, so that no source clashes with one)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import archive as archives
from . import boundary, credentials, fields
from .boundary import quote
from .contract import BuildContextRequest, OwnerReference
from .errors import ContextTooLarge, FieldError, InternalError, InvalidRequest, InvalidSource
from .runtimes import Rendered, Runtime, resolve
from .runtimes.base import Lock, Pinned
from .secret_scan import check_credentials
from .settings import Settings


@dataclass(frozen=True)
class ValidRequest:
    function: str
    runtime: Runtime
    runtime_version: str
    sources: Mapping[str, str]
    dependencies: Pinned
    ttl_seconds: int
    metadata: Mapping[str, str]
    namespace: str | None
    owner: OwnerReference | None
    rendered: Rendered
    """What build-context writes next to the sources: rendered before the sources are checked,
    so that no source path clashes with a generated one."""
    credential_warnings: credentials.Scan = credentials.NOTHING
    lock: Lock | None = None
    warnings: tuple[str, ...] = ()

    @property
    def recorded(self) -> dict[str, Any]:
        """What the context record (function.record) keeps of the request, by attribute."""
        return {
            "function": self.function,
            "runtime": self.runtime.name,
            "runtime_version": self.runtime_version,
            "metadata": self.metadata,
        }

    @property
    def dependencies_locked(self) -> bool:
        return self.lock is not None or not self.dependencies

    def context_files(self) -> dict[str, str]:
        """The sources and the rendered files: every path once (`_sources` refused a clash)."""
        rendered = self.rendered.files()
        if not rendered.keys().isdisjoint(self.sources):
            raise InternalError(f"a source has a generated file's path: {sorted(rendered)}")
        return {**self.sources, **rendered}


def parse(data: Any) -> BuildContextRequest:
    if isinstance(data, bytes | bytearray | str):
        data = _json_data(data)
    if not isinstance(data, Mapping):
        kind = "nothing" if data is None else type(data).__name__
        raise InvalidRequest(
            f"data: expected a JSON object, got {kind}; send the request as application/json",
            [FieldError("expected a JSON object", field="data")],
        )
    try:
        return BuildContextRequest.model_validate(dict(data))
    except ValidationError as exc:
        errors = [_field_error(e) for e in exc.errors()]
        raise InvalidRequest(
            f"{len(errors)} invalid field{'s' if len(errors) > 1 else ''}: "
            f"{errors[0].field}: {errors[0].message}",
            errors,
        ) from None


def _json_data(data: bytes | bytearray | str) -> Any:
    """The event's data when the CloudEvents SDK could not decode it: say what is wrong with it
    (Python's decoder refuses numbers over 4300 digits; deep nesting exhausts the stack)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:
        what = (
            "nests too deeply"
            if isinstance(exc, RecursionError | MemoryError)
            else f"is not valid JSON ({quote(str(exc), 120)})"
        )
        message = (
            f"data: the event data {what}; send the request as a JSON object of the "
            "request schema (config/schemas), with plain numbers and little nesting"
        )
        raise InvalidRequest(message, [FieldError(message, field="data")]) from None


def _field_error(error: Any) -> FieldError:
    loc = boundary.escaped(".".join(str(p) for p in error["loc"]), 120) or "data"
    if error["type"] == "extra_forbidden":
        return FieldError(
            f"unknown field {quote(loc)}; see the request schema (config/schemas) for the fields",
            field=loc,
        )
    if error["type"] == "missing":
        return FieldError(f"{loc} is required", field=loc)
    return FieldError(f"{error['msg']}", field=loc)


def validate(request: BuildContextRequest, settings: Settings) -> ValidRequest:
    problem = boundary.dns_label_problem(request.lambda_function)
    if problem:
        message = f"lambdaFunction: {quote(request.lambda_function)} {problem}"
        raise InvalidRequest(message, [FieldError(message, field="lambdaFunction")])
    runtime, version = resolve(request.runtime, request.runtime_version)
    ttl = fields.ttl(request.ttl_seconds, settings)
    metadata = fields.metadata(request.metadata, settings)
    namespace = request.namespace
    if namespace is not None and (problem := boundary.dns_label_problem(namespace)):
        message = f"namespace: {quote(namespace)} is not a Kubernetes namespace name: it {problem}"
        raise InvalidRequest(message, [FieldError(message, field="namespace")])
    if request.owner is not None:
        fields.owner(request.owner)
    entries = len(request.dependencies)
    if entries > settings.max_dependencies:
        message = (
            f"dependencies: {entries} entries; the limit is {settings.max_dependencies} "
            "(BUILD_CONTEXT_MAX_DEPENDENCIES)"
        )
        raise InvalidRequest(message, [FieldError(message, field="dependencies")])
    check_dependency_lengths(request.dependencies)
    deps = runtime.dependencies(request.dependencies, settings)
    lock = _lock(request, runtime, deps, settings, version)
    # The generated files' names never depend on the sources; their content may (package.json's
    # module type), so the sources are checked against a first rendering, then rendered with.
    layout = runtime.render(version, deps, settings, lock)
    sources = _sources(request, runtime, settings, layout)
    credential_warnings = _credentials(request, sources, settings)
    _syntax(sources, runtime, version)
    rendered = runtime.render(version, deps, settings, lock, sources)
    return ValidRequest(
        function=request.lambda_function,
        namespace=namespace,
        owner=request.owner,
        ttl_seconds=ttl,
        metadata=metadata,
        runtime=runtime,
        runtime_version=version,
        warnings=() if runtime.check_is_exact(version) else (_approximate(runtime.name, version),),
        dependencies=deps,
        lock=lock,
        rendered=rendered,
        sources=sources,
        credential_warnings=credential_warnings,
    )


def _approximate(runtime: str, version: str) -> str:
    return (
        f"syntax: {runtime} {version} is not the serving interpreter's version, so the syntax "
        "check is close but not exact for it (a few version-specific rules may differ); the "
        "build is the final check"
    )


def _lock(
    request: BuildContextRequest,
    runtime: Runtime,
    deps: Pinned,
    settings: Settings,
    version: str,
) -> Lock | None:
    text = request.lock_file
    if text is None:
        if deps and settings.require_locked_dependencies:
            message = (
                "lockFile: dependencies must come with a lock file here "
                "(BUILD_CONTEXT_REQUIRE_LOCKED_DEPENDENCIES=true): send "
                f"{runtime.lock_description} ({runtime.name}) as lockFile"
            )
            raise InvalidRequest(message, [FieldError(message, field="lockFile")])
        return None
    if not deps:
        message = "lockFile: there are no dependencies to lock; send dependencies or no lockFile"
        raise InvalidRequest(message, [FieldError(message, field="lockFile")])
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > settings.max_file_bytes:
        raise ContextTooLarge(
            f"lockFile: {size} bytes; the limit is {settings.max_file_bytes} "
            "(BUILD_CONTEXT_MAX_FILE_BYTES): lock fewer packages or raise the limit",
            [FieldError(f"{size} bytes > {settings.max_file_bytes}", field="lockFile")],
        )
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        message = "lockFile: must be UTF-8 text without NUL bytes"
        raise InvalidRequest(message, [FieldError(message, field="lockFile")])
    return runtime.lock(text, deps, settings, version)


def path_problem(path: str, max_length: int) -> str | None:
    return archives.path_problem(path, max_length)


def _sources(
    request: BuildContextRequest, runtime: Runtime, settings: Settings, rendered: Rendered
) -> dict[str, str]:
    files = _files(request, runtime, settings)
    problems: list[FieldError] = []
    checked: list[str] = []
    total = 0
    for path, text in sorted(files.items()):
        where = _source_field(request, path)
        problem = _file_problem(path, text, where, runtime, settings)
        size = problem or _size(path, text, where, settings)
        if isinstance(size, FieldError):
            problems.append(size)
            continue
        total += size
        checked.append(path)
    if total > settings.max_total_bytes:
        raise ContextTooLarge(
            f"files: {total} bytes of source; the limit is {settings.max_total_bytes} "
            "(BUILD_CONTEXT_MAX_TOTAL_BYTES): send less source or raise the limit",
            [FieldError(f"{total} bytes > {settings.max_total_bytes}", field="files")],
        )
    problems += _tree_problems(request, checked, rendered)
    if problems:
        raise InvalidSource(f"{len(problems)} invalid file(s): {problems[0].message}", problems)
    return dict(sorted(files.items()))


def _files(request: BuildContextRequest, runtime: Runtime, settings: Settings) -> dict[str, str]:
    """`files` with `sourceCode` as the entry file, which must be there once; not too many."""
    files = dict(request.files)
    if request.source_code is not None:
        if runtime.entry_file in files:
            message = (
                f"sourceCode and files[{runtime.entry_file!r}] both give the entry file; send one"
            )
            raise InvalidRequest(message, [FieldError(message, field="sourceCode")])
        files[runtime.entry_file] = request.source_code
    if runtime.entry_file not in files:
        message = f"sourceCode: missing; send the entry file {runtime.entry_file} as sourceCode or in files"
        raise InvalidRequest(message, [FieldError(message, field="sourceCode")])
    if len(files) > settings.max_files:
        raise ContextTooLarge(
            f"files: {len(files)} files; the limit is {settings.max_files} "
            "(BUILD_CONTEXT_MAX_FILES): send fewer files or raise the limit",
            [FieldError(f"more than {settings.max_files} files", field="files")],
        )
    return files


def _file_problem(
    path: str, text: str, where: str, runtime: Runtime, settings: Settings
) -> FieldError | None:
    """The first thing wrong with a source file's path or text, if any."""
    problem = path_problem(path, settings.max_path_length)
    if problem:
        shown = boundary.escaped(path)
        field = "sourceCode" if where == "sourceCode" else f"files.{shown}"
        return FieldError(f"path {quote(path)} {problem}", field=field, file=shown)
    folded = path.casefold()
    tool_problem = _builder_file_problem(folded) or runtime.tool_file_problem(path)
    if tool_problem:
        return FieldError(
            f"{quote(path)} {tool_problem}; rename or leave out the file", field=where, file=path
        )
    if folded in {g.casefold() for g in runtime.generated_files}:
        return FieldError(
            f"{quote(path)} is generated by build-context from the request; put "
            "dependencies in `dependencies` and a lock file in `lockFile` instead",
            field=where,
            file=path,
        )
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        return FieldError(
            "contains a NUL byte; only text files are accepted", field=where, file=path, line=line
        )
    if path == runtime.entry_file and not text.strip():
        return FieldError(
            "the entry file is empty: send the program's source", field=where, file=path, line=1
        )
    return None


def _size(path: str, text: str, where: str, settings: Settings) -> int | FieldError:
    """The file's size as stored (UTF-8), within the limit per file."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return FieldError(f"is not valid UTF-8 text ({exc.reason})", field=where, file=path)
    if size > settings.max_file_bytes:
        raise ContextTooLarge(
            f"{where}: {path} is {size} bytes; the limit per file is {settings.max_file_bytes} "
            "(BUILD_CONTEXT_MAX_FILE_BYTES): split the file or raise the limit",
            [FieldError(f"{size} bytes > {settings.max_file_bytes}", field=where, file=path)],
        )
    return size


def _tree_problems(
    request: BuildContextRequest, paths: list[str], rendered: Rendered
) -> list[FieldError]:
    """Paths that would unpack as something else: a name twice after case folding, or a file
    under a file (`lib` and `lib/util.py`), among the sources and what build-context renders
    (Dockerfile, manifests, lock files: whatever the runtime renders today)."""
    generated = set(rendered.files())
    problems = []
    for conflict in archives.tree_conflicts([*generated, *paths]):
        first = (
            f"{quote(conflict.first)}, which build-context generates,"
            if conflict.first in generated
            else quote(conflict.first)
        )
        message = f"{quote(conflict.second)} and {first} {conflict.problem}; rename one of them"
        where = _source_field(request, conflict.second)
        problems.append(FieldError(message, field=where, file=conflict.second))
    return problems


def _builder_file_problem(folded: str) -> str | None:
    """Files the image builder reads as instructions (Dockerfile is generated; dotfiles such as
    .dockerignore are refused by the path rule): BuildKit reads <Dockerfile>.dockerignore and
    podman/buildah Containerfile."""
    if folded == "containerfile" or (
        "/" not in folded and folded.endswith((".dockerignore", ".containerignore"))
    ):
        return "is read by the image builder as its own instructions"
    return None


def check_dependency_lengths(dependencies: Sequence[str] | Mapping[str, str]) -> None:
    if isinstance(dependencies, Mapping):
        sizes = [
            (f"dependencies.{boundary.escaped(name)}", len(name) + len(spec))
            for name, spec in dependencies.items()
        ]
    else:
        sizes = [(f"dependencies[{index}]", len(spec)) for index, spec in enumerate(dependencies)]
    problems = [
        FieldError(
            f"{size} characters; the limit is {boundary.DEPENDENCY_MAX} per dependency: name "
            "one package and a version range, without long markers",
            field=where,
        )
        for where, size in sizes
        if size > boundary.DEPENDENCY_MAX
    ]
    if problems:
        raise InvalidRequest(f"{problems[0].field}: {problems[0].message}", problems)


def _syntax(sources: Mapping[str, str], runtime: Runtime, version: str) -> None:
    problems = runtime.source_errors(
        {path: text for path, text in sources.items() if runtime.is_source(path)}, version
    )
    if problems:
        first = problems[0]
        raise InvalidSource(f"{first.file}: {first.message}", problems)


def _credentials(
    request: BuildContextRequest, sources: Mapping[str, str], settings: Settings
) -> credentials.Scan:
    return check_credentials(sources, settings, lambda path: _source_field(request, path))


def _source_field(request: BuildContextRequest, path: str) -> str:
    return (
        "sourceCode"
        if request.source_code is not None and path not in request.files
        else f"files.{path}"
    )
