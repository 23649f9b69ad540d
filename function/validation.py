"""Checks on the untrusted request, all before anything is rendered or stored."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import credentials
from .contract import BuildContextRequest, OwnerReference
from .errors import ContextTooLarge, FieldError, InvalidRequest, InvalidSource
from .runtimes import Runtime, resolve
from .runtimes.base import Lock, Pinned
from .settings import Settings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*$")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


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
    credential_warnings: tuple[credentials.Finding, ...] = ()
    lock: Lock | None = None

    @property
    def dependencies_locked(self) -> bool:
        return self.lock is not None or not self.dependencies


def parse(data: Any) -> BuildContextRequest:
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


def _field_error(error: Any) -> FieldError:
    loc = ".".join(str(p) for p in error["loc"]) or "data"
    if error["type"] == "extra_forbidden":
        return FieldError(
            f"unknown field {loc!r}; see the request schema (config/schemas) for the fields",
            field=loc,
        )
    if error["type"] == "missing":
        return FieldError(f"{loc} is required", field=loc)
    return FieldError(f"{error['msg']}", field=loc)


def function_name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if len(name) > 63:
        return f"is {len(name)} characters; the limit is 63 (a Kubernetes label value)"
    if not DNS_LABEL.match(name):
        return (
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return None


def validate(request: BuildContextRequest, settings: Settings) -> ValidRequest:
    problem = function_name_problem(request.lambda_function)
    if problem:
        message = f"lambdaFunction: {request.lambda_function!r} {problem}"
        raise InvalidRequest(message, [FieldError(message, field="lambdaFunction")])
    runtime, version = resolve(request.runtime, request.runtime_version)
    ttl = _ttl(request.ttl_seconds, settings)
    metadata = _metadata(request.metadata, settings)
    namespace = request.namespace
    if namespace is not None and not DNS_LABEL.match(namespace):
        message = f"namespace: {namespace!r} is not a Kubernetes namespace name"
        raise InvalidRequest(message, [FieldError(message, field="namespace")])
    entries = len(request.dependencies)
    if entries > settings.max_dependencies:
        message = (
            f"dependencies: {entries} entries; the limit is {settings.max_dependencies} "
            "(BUILD_CONTEXT_MAX_DEPENDENCIES)"
        )
        raise InvalidRequest(message, [FieldError(message, field="dependencies")])
    deps = runtime.dependencies(request.dependencies, settings)
    lock = _lock(request, runtime, deps, settings)
    sources = _sources(request, runtime, settings)
    warnings = _credentials(request, sources, settings)
    _syntax(sources, runtime, version)
    return ValidRequest(
        request.lambda_function,
        runtime,
        version,
        sources,
        deps,
        ttl,
        metadata,
        namespace,
        request.owner,
        warnings,
        lock,
    )


def _lock(
    request: BuildContextRequest, runtime: Runtime, deps: Pinned, settings: Settings
) -> Lock | None:
    text = request.lock_file
    if text is None:
        if deps and settings.require_locked_dependencies:
            message = (
                "lockFile: dependencies must come with a lock file here "
                "(BUILD_CONTEXT_REQUIRE_LOCKED_DEPENDENCIES=true): send pip requirements with "
                "--hash, a package-lock.json or a go.sum as lockFile"
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
    return runtime.lock(text, deps, settings)


def _ttl(ttl: int | None, settings: Settings) -> int:
    if ttl is None:
        return settings.ttl_seconds
    if not 60 <= ttl <= settings.max_ttl_seconds:
        message = (
            f"ttlSeconds: {ttl} is outside 60..{settings.max_ttl_seconds}; ask for less or raise "
            "BUILD_CONTEXT_MAX_TTL_SECONDS"
        )
        raise InvalidRequest(message, [FieldError(message, field="ttlSeconds")])
    return ttl


def _metadata(metadata: Mapping[str, str], settings: Settings) -> dict[str, str]:
    problems = []
    if len(metadata) > settings.max_metadata_entries:
        problems.append(
            FieldError(
                f"{len(metadata)} entries; the limit is {settings.max_metadata_entries} "
                "(BUILD_CONTEXT_MAX_METADATA_ENTRIES)",
                field="metadata",
            )
        )
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            problems.append(
                FieldError(
                    f"key {key!r} must be 1-63 letters, digits, '.', '_' or '-', starting and "
                    "ending with a letter or digit",
                    field=f"metadata.{key}",
                )
            )
        elif len(value) > 1024 or not value.isprintable():
            problems.append(
                FieldError(
                    "values are printable text of at most 1024 characters",
                    field=f"metadata.{key}",
                )
            )
    if problems:
        raise InvalidRequest(f"metadata: {problems[0].message}", problems)
    return dict(sorted(metadata.items()))


def path_problem(path: str, max_length: int) -> str | None:
    if not path:
        return "is empty"
    if len(path.encode("utf-8")) > max_length:
        return f"is longer than {max_length} bytes (BUILD_CONTEXT_MAX_PATH_LENGTH)"
    if "\\" in path:
        return "contains a backslash; use '/' between folders"
    if path.startswith("/"):
        return "is absolute; give a path relative to the context root"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a control character"
    if posixpath.normpath(path) != path or ".." in path.split("/"):
        return "is not normalised (no '..', '.', '//' or trailing '/')"
    bad = next((p for p in path.split("/") if not _PATH_PART.match(p)), None)
    if bad is not None:
        return (
            f"has the part {bad!r}: use letters, digits, '.', '_', '-', '@', '+' "
            "(not starting with '.')"
        )
    return None


def _sources(request: BuildContextRequest, runtime: Runtime, settings: Settings) -> dict[str, str]:
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
    problems: list[FieldError] = []
    generated = {g.casefold() for g in runtime.generated_files}
    seen: dict[str, str] = {}
    total = 0
    for path, text in sorted(files.items()):
        where = (
            "sourceCode"
            if path == runtime.entry_file and request.source_code is not None
            else f"files.{path}"
        )
        problem = path_problem(path, settings.max_path_length)
        if problem:
            problems.append(FieldError(f"path {path!r} {problem}", field=where, file=path))
            continue
        folded = path.casefold()
        if folded in generated:
            problems.append(
                FieldError(
                    f"{path!r} is generated by build-context from the request; put dependencies "
                    "in `dependencies` and a lock file in `lockFile` instead",
                    field=where,
                    file=path,
                )
            )
            continue
        if folded in seen:
            problems.append(
                FieldError(
                    f"{path!r} differs from {seen[folded]!r} only by case", field=where, file=path
                )
            )
            continue
        seen[folded] = path
        if "\x00" in text:
            line = text.count("\n", 0, text.index("\x00")) + 1
            problems.append(
                FieldError(
                    "contains a NUL byte; only text files are accepted",
                    field=where,
                    file=path,
                    line=line,
                )
            )
            continue
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            problems.append(
                FieldError(f"is not valid UTF-8 text ({exc.reason})", field=where, file=path)
            )
            continue
        if size > settings.max_file_bytes:
            raise ContextTooLarge(
                f"{where}: {path} is {size} bytes; the limit per file is {settings.max_file_bytes} "
                "(BUILD_CONTEXT_MAX_FILE_BYTES): split the file or raise the limit",
                [FieldError(f"{size} bytes > {settings.max_file_bytes}", field=where, file=path)],
            )
        total += size
    if total > settings.max_total_bytes:
        raise ContextTooLarge(
            f"files: {total} bytes of source; the limit is {settings.max_total_bytes} "
            "(BUILD_CONTEXT_MAX_TOTAL_BYTES): send less source or raise the limit",
            [FieldError(f"{total} bytes > {settings.max_total_bytes}", field="files")],
        )
    if problems:
        raise InvalidSource(f"{len(problems)} invalid file(s): {problems[0].message}", problems)
    return dict(sorted(files.items()))


def _syntax(sources: Mapping[str, str], runtime: Runtime, version: str) -> None:
    problems: list[FieldError] = []
    for path, text in sources.items():
        if runtime.is_source(path):
            problems += runtime.source_errors(path, text, version)
    if problems:
        first = problems[0]
        raise InvalidSource(f"{first.file}: {first.message}", problems)


def _credentials(
    request: BuildContextRequest, sources: Mapping[str, str], settings: Settings
) -> tuple[credentials.Finding, ...]:
    return check_credentials(sources, settings, lambda path: _source_field(request, path))


def check_credentials(
    files: Mapping[str, str], settings: Settings, field_of: Callable[[str], str]
) -> tuple[credentials.Finding, ...]:
    """Credentials in these files: refused (InvalidSource), or returned as warnings, by
    BUILD_CONTEXT_SECRET_SCAN. File, line and kind only: never the secret."""
    if settings.secret_scan == "off":
        return ()
    findings = tuple(credentials.scan(files))
    if not findings or settings.secret_scan == "warn":
        return findings
    problems = [
        FieldError(
            f"line {f.line}: {f.kind}; keep credentials out of the source (read them at run time "
            f"from a mounted Secret or the environment), or mark a false positive with "
            f"'{credentials.ALLOW_MARKER}' in a comment on that line",
            field=field_of(f.file),
            file=f.file,
            line=f.line,
        )
        for f in findings
    ]
    first = findings[0]
    raise InvalidSource(
        f"{first.file}: line {first.line}: {first.kind} in the source ({len(findings)} "
        f"finding{'s' if len(findings) > 1 else ''}); remove it and read it at run time from a "
        f"Secret, or mark a false positive with '{credentials.ALLOW_MARKER}' on that line",
        problems,
    )


def _source_field(request: BuildContextRequest, path: str) -> str:
    return (
        "sourceCode"
        if request.source_code is not None and path not in request.files
        else f"files.{path}"
    )
