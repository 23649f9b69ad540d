"""npm's package-lock.json (lockfileVersion 2 or 3, as npm 7+ writes it), read as `npm ci`
installs it in the image, and the copy the context keeps: only the fields npm ci reads."""

from __future__ import annotations

import re
from typing import Any

import semantic_version

from .. import boundary
from ..boundary import quote
from ..errors import InvalidRequest
from .base import MAX_LOCK_ENTRIES, Lock, Pinned, lock_error

NPM_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*")
"""validate-npm-package-name, for new packages: lowercase, URL-safe, optional @scope/."""
_REGISTRY = "https://registry.npmjs.org/"
# Subresource Integrity as npm writes it: one or more `sha512-<base64>` (sha1 is refused).
_INTEGRITY = re.compile(r"sha512-[A-Za-z0-9+/]{86}==(?: sha512-[A-Za-z0-9+/]{86}==)*")
_LOCK_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,64}")
_LOCK_TARBALL = re.compile(r"[a-z0-9._~-]{1,214}-[0-9A-Za-z.+-]{1,64}\.tgz")
_FLAGS = ("dev", "optional", "devOptional", "peer", "hasInstallScript", "inBundle")
_MAPS = ("dependencies", "optionalDependencies", "peerDependencies")
_PLATFORM = {"os": ("linux",), "cpu": ("x64", "arm64"), "libc": ("glibc",)}
"""npm's platform fields, and what they must admit for the build: Debian (glibc) Linux on
either architecture the builders run (the machine is not known before the build)."""
_PLATFORM_VALUE = re.compile(r"!?[A-Za-z0-9_]{1,32}")
_KEPT = ("version", "resolved", "integrity", "license", *_FLAGS, *_MAPS, *_PLATFORM)
_IGNORED = ("engines", "bin", "funding", "deprecated", "peerDependenciesMeta")
"""Fields npm writes that do not change what `npm ci` installs here; dropped from the copy.
`engines` only warns (EBADENGINE) unless engine-strict is set, which the image does not."""
ROOT = {"name": "remediation", "version": "1.0.0"}
"""The package the context's package.json declares."""


def _refused(problem: str) -> InvalidRequest:
    return lock_error(problem, "nodejs")


def read_lock(text: str, deps: Pinned) -> Lock:
    """Its root must declare exactly the request's dependencies (npm ci refuses a lock out of
    step with package.json), every package must come from the npm registry with a sha512
    integrity, and each direct dependency's locked version must be in its declared range.
    What npm ci would skip or fail on in the image is refused for a dependency the lock must
    pin: a direct one marked dev, optional, peer or bundled (`--omit=dev` leaves a dev one
    out; npm never writes those flags on a direct dependency), and any package whose
    os/cpu/libc may exclude the builder, unless it is optional (npm then skips it, as with
    the caller's lock). The copy keeps lockfileVersion 3."""
    packages = _packages(text)
    declared = dict(deps)
    root = packages[""]
    if root.get("dependencies", {}) != declared or any(
        root.get(k) for k in ("devDependencies", "optionalDependencies", "peerDependencies")
    ):
        raise _refused(
            "its root dependencies differ from the request's `dependencies`; generate it "
            "from the same package.json (`npm install --package-lock-only`)"
        )
    locked: dict[str, Any] = {"": {**ROOT, "dependencies": declared}}
    for path, entry in sorted(packages.items()):
        if path:
            locked[path] = _package(path, entry)
    for name, spec in deps:
        _check_direct(name, spec, locked.get(f"node_modules/{name}"))
    return {**ROOT, "lockfileVersion": 3, "requires": True, "packages": locked}


def _packages(text: str) -> dict[str, Any]:
    try:
        data = boundary.json_document(text)
    except ValueError as error:
        raise _refused(f"is not JSON ({quote(str(error), 120)})") from None
    if not isinstance(data, dict) or data.get("lockfileVersion") not in (2, 3):
        raise _refused("must be a package-lock.json with lockfileVersion 2 or 3 (npm 7 or later)")
    packages = data.get("packages")
    if not isinstance(packages, dict) or not isinstance(packages.get(""), dict):
        raise _refused("has no 'packages' with a root entry \"\"")
    if len(packages) > MAX_LOCK_ENTRIES:
        raise _refused(f"has more than {MAX_LOCK_ENTRIES} packages")
    return packages


def _check_direct(name: str, spec: str, entry: dict[str, Any] | None) -> None:
    if entry is None:
        raise _refused(f"the dependency {quote(name)} is not in the lock file")
    if semantic_version.Version(entry["version"]) not in semantic_version.NpmSpec(spec):
        raise _refused(
            f"the lock has {name}@{entry['version']}, outside the declared range {quote(spec)}"
        )
    flagged = [flag for flag in _FLAGS if entry.get(flag) and flag != "hasInstallScript"]
    if flagged:
        raise _refused(
            f"the direct dependency {quote(name)} is marked {flagged[0]}, which npm "
            "never writes on a direct dependency and which may make npm ci leave it "
            "out (--omit=dev); generate the lock again (`npm install --package-lock-only`)"
        )


def _package(path: str, entry: Any) -> dict[str, Any]:
    """One `node_modules/…` entry, checked, with only the fields npm ci needs (in this order:
    the copy's bytes are the context's)."""
    name = _package_name(path)
    if not isinstance(entry, dict):
        raise _refused(f"{path}: must be an object")
    if entry.get("link"):
        raise _refused(f"{path}: links to local folders are not allowed")
    unknown = sorted(set(entry) - set(_KEPT) - set(_IGNORED) - {"name"})
    if unknown:
        raise _refused(f"{quote(path)}: unexpected field {quote(unknown[0])}")
    version = _version(path, entry.get("version"))
    resolved = _resolved(path, name, entry.get("resolved"))
    kept: dict[str, Any] = {
        "version": version,
        "integrity": _integrity(path, entry.get("integrity")),
    }
    if resolved is not None:
        kept["resolved"] = resolved
    kept.update(_flags(path, entry))
    for field, wanted in _PLATFORM.items():
        if field in entry:
            kept[field] = _platform(path, field, entry[field], wanted, bool(kept.get("optional")))
    if isinstance(entry.get("license"), str) and len(entry["license"]) <= 200:
        kept["license"] = entry["license"]
    kept.update(_dependency_maps(path, entry))
    return kept


def _package_name(path: str) -> str:
    parts = path.split("/node_modules/")
    names = [parts[0].removeprefix("node_modules/"), *parts[1:]]
    if (
        not path.startswith("node_modules/")
        or len(path) > 1000
        or not all(NPM_NAME.fullmatch(n) and len(n) <= 214 for n in names)
    ):
        raise _refused(f"{quote(path)} is not a node_modules/<package> path")
    return names[-1]


def _version(path: str, version: Any) -> str:
    if not isinstance(version, str) or not _LOCK_VERSION.fullmatch(version):
        raise _refused(f"{path}: needs a version")
    try:
        semantic_version.Version(version)
    except ValueError:
        raise _refused(f"{quote(path)}: {quote(version)} is not a semantic version") from None
    return version


def _integrity(path: str, integrity: Any) -> str:
    if not isinstance(integrity, str) or not _INTEGRITY.fullmatch(integrity):
        raise _refused(f"{path}: needs a sha512 integrity")
    return integrity


def _resolved(path: str, name: str, resolved: Any) -> str | None:
    """Without `resolved` (npm's omit-lockfile-registry-resolved) npm ci fetches name@version
    from the configured registry; the integrity is checked either way."""
    tarball = f"{_REGISTRY}{name}/-/"
    if resolved is not None and (
        not isinstance(resolved, str)
        or not resolved.startswith(tarball)
        or not _LOCK_TARBALL.fullmatch(resolved[len(tarball) :])
    ):
        raise _refused(f"{path}: must be resolved from {_REGISTRY} (no git, file, or other URLs)")
    return resolved


def _flags(path: str, entry: dict[str, Any]) -> dict[str, bool]:
    flags = {}
    for flag in _FLAGS:
        if flag in entry:
            if not isinstance(entry[flag], bool):
                raise _refused(f"{path}: {flag} must be true or false")
            flags[flag] = entry[flag]
    return flags


def _dependency_maps(path: str, entry: dict[str, Any]) -> dict[str, dict[str, str]]:
    maps = {}
    for field in _MAPS:
        if field in entry:
            ranges = entry[field]
            if not isinstance(ranges, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 214 and len(v) <= 200
                for k, v in ranges.items()
            ):
                raise _refused(f"{path}: {field} must map names to ranges")
            maps[field] = dict(sorted(ranges.items()))
    return maps


def _platform(
    path: str, field: str, value: Any, wanted: tuple[str, ...], optional: bool
) -> list[str]:
    """An os/cpu/libc list, checked; a package that is not optional must admit every `wanted`
    value, or npm ci fails on the builder (EBADPLATFORM) or depends on its machine."""
    values = _platform_values(path, field, value)
    excluded = [] if optional else [w for w in wanted if not npm_admits(w, values)]
    if excluded:
        raise _refused(
            f"{path}: {field} {quote(' '.join(values))} excludes {excluded[0]!r}, where "
            "the context is built "
            f"(Linux with glibc on {' or '.join(_PLATFORM['cpu'])}): npm ci fails there "
            "(EBADPLATFORM), unless the package is optional"
        )
    return list(values)


def _platform_values(path: str, field: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not 0 < len(values) <= 32
        or not all(isinstance(v, str) and _PLATFORM_VALUE.fullmatch(v) for v in values)
    ):
        raise _refused(f"{path}: {field} must be a list of names such as 'linux'")
    return values


def npm_admits(current: str, values: list[str]) -> bool:
    """npm-install-checks' checkList: 'any' alone admits all; otherwise no negated entry
    ('!linux') may name the value, and a plain entry must, if there is any."""
    if values == ["any"]:
        return True
    plain = [v for v in values if not v.startswith("!")]
    if f"!{current}" in values:
        return False
    return not plain or current in plain
