"""Node.js: package.json from {name: semver range}, installed without dev deps or scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import semantic_version

from .. import boundary
from ..boundary import quote
from ..errors import FieldError, InvalidRequest
from ..settings import Settings
from .base import (
    GENERATED_FOR_EVERY_RUNTIME,
    MAX_LOCK_ENTRIES,
    Dependencies,
    Lock,
    Pinned,
    Rendered,
    Runtime,
    lock_error,
    with_build_ca,
)
from .treesitter import TreeSitterGrammar

# validate-npm-package-name, for new packages: lowercase, URL-safe, optional @scope/.
_NPM_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*")
# The semver ranges npm-package-arg reads as ranges, and nothing it reads otherwise: plain
# ASCII comparators, X-ranges, hyphen ranges and ||. No tags, URLs, git, file:, npm: aliases.
_NUM = r"(?:0|[1-9][0-9]{0,15})"
_X = r"[xX*]"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_TAIL = rf"(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
# A wildcard part is never followed by a number (node-semver reads '1.x.0' as no range).
_VERSION = (
    rf"v?(?:{_NUM}(?:\.{_NUM}(?:\.{_NUM}{_TAIL}|\.{_X})?|\.{_X}(?:\.{_X})?)?"
    rf"|{_X}(?:\.{_X}(?:\.{_X})?)?)"
)
_COMPARATOR = rf"(?:[~^]|[<>]=?|=)?{_VERSION}"
_RANGE = rf"(?:{_VERSION} - {_VERSION}|{_COMPARATOR}(?: {_COMPARATOR})*)"
_NPM_RANGE = re.compile(rf"{_RANGE}(?: \|\| {_RANGE})*")
_NPM_RANGE_MAX = 256
# npm-package-arg reads a spec ending like a tarball as a local file, before trying semver.
_TARBALL = re.compile(r"(?i).*\.(?:tgz|tar\.gz|tar)")
_GRAMMAR = TreeSitterGrammar("javascript", "JavaScript")
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


class NodeRuntime(Runtime):
    name = "nodejs"
    aliases = ("node", "javascript", "js")
    entry_file = "remediation.js"
    source_suffixes = (".js", ".mjs", ".cjs")
    versions = ("22", "24")
    default_version = "24"
    generated_files = GENERATED_FOR_EVERY_RUNTIME | {"package.json", "package-lock.json"}

    def dependencies(self, deps: Dependencies, settings: Settings) -> Pinned:
        if not isinstance(deps, Mapping):
            if not deps:
                return ()
            raise InvalidRequest(
                "dependencies: Node.js dependencies are an object of package name to semver "
                'range, e.g. {"axios": "^1.7.0"}',
                [FieldError("must be an object {name: range} for nodejs", field="dependencies")],
            )
        problems: list[FieldError] = []
        pairs: list[tuple[int, str, str]] = []
        for index, (name, spec) in enumerate(deps.items()):
            where = f"dependencies.{name}"
            if (
                len(name) > 214
                or _NPM_NAME.fullmatch(name) is None
                or name in {"node_modules", "favicon.ico"}
            ):
                where = f"dependencies.{boundary.escaped(name)}"
                problems.append(
                    FieldError(
                        f"{quote(name)} is not a valid npm package name (lowercase letters, digits, "
                        "'-', '.', '_', '~', optional @scope/, at most 214 characters)",
                        field=where,
                    )
                )
                continue
            if not _is_range(spec):
                problems.append(
                    FieldError(
                        f"{quote(spec)} is not a semver range; URLs, git, file:, tarballs and "
                        "tags are not allowed: write e.g. '^1.2.3', '~4.17.0' or '>=1 <3'",
                        field=where,
                    )
                )
                continue
            pairs.append((index, name, spec))
        return self.pinned(problems, pairs)

    def lock(self, text: str, deps: Pinned, settings: Settings, version: str) -> Lock:
        """A package-lock.json (lockfileVersion 2 or 3, as npm 7+ writes it). Its root must
        declare exactly the request's dependencies (npm ci refuses a lock out of step with
        package.json), every package must come from the npm registry with a sha512 integrity,
        and each direct dependency's locked version must be in its declared range. What npm
        ci would skip or fail on in the image is refused for a dependency the lock must pin:
        a direct one marked dev, optional, peer or bundled (`--omit=dev` leaves a dev one
        out; npm never writes those flags on a direct dependency), and any package whose
        os/cpu/libc may exclude the builder, unless it is optional (npm then skips it, as
        with the caller's lock). The copy in the context keeps only the fields npm ci reads
        (lockfileVersion 3)."""
        try:
            data = boundary.json_document(text)
        except ValueError as error:
            raise lock_error(f"is not JSON ({quote(str(error), 120)})", self.name) from None
        if not isinstance(data, dict) or data.get("lockfileVersion") not in (2, 3):
            raise lock_error(
                "must be a package-lock.json with lockfileVersion 2 or 3 (npm 7 or later)",
                self.name,
            )
        packages = data.get("packages")
        if not isinstance(packages, dict) or not isinstance(packages.get(""), dict):
            raise lock_error("has no 'packages' with a root entry \"\"", self.name)
        if len(packages) > MAX_LOCK_ENTRIES:
            raise lock_error(f"has more than {MAX_LOCK_ENTRIES} packages", self.name)
        declared = dict(deps)
        root = packages[""]
        if root.get("dependencies", {}) != declared or any(
            root.get(k) for k in ("devDependencies", "optionalDependencies", "peerDependencies")
        ):
            raise lock_error(
                "its root dependencies differ from the request's `dependencies`; generate it "
                "from the same package.json (`npm install --package-lock-only`)",
                self.name,
            )
        locked: dict[str, Any] = {
            "": {"name": "remediation", "version": "1.0.0", "dependencies": declared}
        }
        for path, entry in sorted(packages.items()):
            if path:
                locked[path] = _package(path, entry, self.name)
        for name, spec in deps:
            entry = locked.get(f"node_modules/{name}")
            if entry is None:
                raise lock_error(f"the dependency {quote(name)} is not in the lock file", self.name)
            if semantic_version.Version(entry["version"]) not in semantic_version.NpmSpec(spec):
                raise lock_error(
                    f"the lock has {name}@{entry['version']}, outside the declared range {quote(spec)}",
                    self.name,
                )
            flagged = [flag for flag in _FLAGS if entry.get(flag) and flag != "hasInstallScript"]
            if flagged:
                raise lock_error(
                    f"the direct dependency {quote(name)} is marked {flagged[0]}, which npm "
                    "never writes on a direct dependency and which may make npm ci leave it "
                    "out (--omit=dev); generate the lock again (`npm install --package-lock-only`)",
                    self.name,
                )
        return {
            "name": "remediation",
            "version": "1.0.0",
            "lockfileVersion": 3,
            "requires": True,
            "packages": locked,
        }

    def source_errors(self, sources: Mapping[str, str], version: str) -> list[FieldError]:
        return _GRAMMAR.first_errors(sources)

    def tool_file_problem(self, path: str) -> str | None:
        if path.split("/", 1)[0] == "node_modules":
            return (
                "is in node_modules/, where npm installs the dependencies: it would replace "
                "installed packages; send your own modules in another folder"
            )
        if path in ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml"):
            return "is a lockfile that package managers read as install instructions"
        return None

    def render(
        self,
        version: str,
        deps: Pinned,
        settings: Settings,
        lock: Lock | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> Rendered:
        package: dict[str, Any] = {
            "name": "remediation",
            "version": "1.0.0",
            "private": True,
            "main": self.entry_file,
        }
        if sources and all_es_modules(sources):
            package["type"] = "module"
        package["dependencies"] = dict(deps)
        # NODE_EXTRA_CA_CERTS adds to the CAs node carries.
        if lock:
            install = "COPY package.json package-lock.json ./\n" + with_build_ca(
                "NODE_EXTRA_CA_CERTS",
                "npm ci --omit=dev --ignore-scripts && npm cache clean --force",
            )
        elif deps:
            install = "COPY package.json ./\n" + with_build_ca(
                "NODE_EXTRA_CA_CERTS",
                "npm install --omit=dev --ignore-scripts --no-package-lock "
                "&& npm cache clean --force",
            )
        else:
            install = ""
        manifests = {"package.json": json.dumps(package, indent=2) + "\n"}
        if lock:
            manifests["package-lock.json"] = json.dumps(lock, indent=2) + "\n"
        dockerfile = (
            f"FROM {settings.image(settings.nodejs_image, version)}\n"
            "ENV NODE_ENV=production \\\n"
            "    NPM_CONFIG_UPDATE_NOTIFIER=false \\\n"
            "    NPM_CONFIG_FUND=false \\\n"
            "    NPM_CONFIG_AUDIT=false \\\n"
            # npm leaves a debug log per run (named by the time) and V8's code cache of its own
            # modules in the image: neither, so that the same context builds the same image.
            "    NPM_CONFIG_LOGS_MAX=0 \\\n"
            "    NODE_DISABLE_COMPILE_CACHE=1\n"
            "WORKDIR /app\n"
            f"{install}"
            "COPY . ./\n"
            "USER 10001:0\n"
            f'CMD ["node", "{self.entry_file}"]\n'
        )
        return Rendered(dockerfile, manifests)


def _package(path: str, entry: Any, runtime: str) -> dict[str, Any]:
    """One `node_modules/…` entry, checked, with only the fields npm ci needs."""
    parts = path.split("/node_modules/")
    first = parts[0].removeprefix("node_modules/")
    names = [first, *parts[1:]]
    if (
        not path.startswith("node_modules/")
        or len(path) > 1000
        or not all(_NPM_NAME.fullmatch(n) and len(n) <= 214 for n in names)
    ):
        raise lock_error(f"{quote(path)} is not a node_modules/<package> path", runtime)
    if not isinstance(entry, dict):
        raise lock_error(f"{path}: must be an object", runtime)
    if entry.get("link"):
        raise lock_error(f"{path}: links to local folders are not allowed", runtime)
    unknown = sorted(set(entry) - set(_KEPT) - set(_IGNORED) - {"name"})
    if unknown:
        raise lock_error(f"{quote(path)}: unexpected field {quote(unknown[0])}", runtime)
    name = names[-1]
    version = entry.get("version")
    resolved = entry.get("resolved")
    tarball = f"{_REGISTRY}{name}/-/"
    if not isinstance(version, str) or not _LOCK_VERSION.fullmatch(version):
        raise lock_error(f"{path}: needs a version", runtime)
    try:
        semantic_version.Version(version)
    except ValueError:
        raise lock_error(
            f"{quote(path)}: {quote(version)} is not a semantic version", runtime
        ) from None
    # Without `resolved` (npm's omit-lockfile-registry-resolved) npm ci fetches name@version
    # from the configured registry; the integrity is checked either way.
    if resolved is not None and (
        not isinstance(resolved, str)
        or not resolved.startswith(tarball)
        or not _LOCK_TARBALL.fullmatch(resolved[len(tarball) :])
    ):
        raise lock_error(
            f"{path}: must be resolved from {_REGISTRY} (no git, file, or other URLs)", runtime
        )
    integrity = entry.get("integrity")
    if not isinstance(integrity, str) or not _INTEGRITY.fullmatch(integrity):
        raise lock_error(f"{path}: needs a sha512 integrity", runtime)
    kept: dict[str, Any] = {"version": version, "integrity": integrity}
    if resolved is not None:
        kept["resolved"] = resolved
    for flag in _FLAGS:
        if flag in entry:
            if not isinstance(entry[flag], bool):
                raise lock_error(f"{path}: {flag} must be true or false", runtime)
            kept[flag] = entry[flag]
    for field, wanted in _PLATFORM.items():
        if field in entry:
            kept[field] = _platform(path, field, entry[field], wanted, runtime, kept)
    if isinstance(entry.get("license"), str) and len(entry["license"]) <= 200:
        kept["license"] = entry["license"]
    for field in _MAPS:
        if field in entry:
            ranges = entry[field]
            if not isinstance(ranges, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 214 and len(v) <= 200
                for k, v in ranges.items()
            ):
                raise lock_error(f"{path}: {field} must map names to ranges", runtime)
            kept[field] = dict(sorted(ranges.items()))
    return kept


def _platform(
    path: str, field: str, value: Any, wanted: tuple[str, ...], runtime: str, kept: dict[str, Any]
) -> list[str]:
    """An os/cpu/libc list, checked; a package that is not optional must admit every `wanted`
    value, or npm ci fails on the builder (EBADPLATFORM) or depends on its machine."""
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not 0 < len(values) <= 32
        or not all(isinstance(v, str) and _PLATFORM_VALUE.fullmatch(v) for v in values)
    ):
        raise lock_error(f"{path}: {field} must be a list of names such as 'linux'", runtime)
    if not kept.get("optional"):
        excluded = [w for w in wanted if not npm_admits(w, values)]
        if excluded:
            raise lock_error(
                f"{path}: {field} {quote(' '.join(values))} excludes {excluded[0]!r}, where "
                "the context is built "
                f"(Linux with glibc on {' or '.join(_PLATFORM['cpu'])}): npm ci fails there "
                "(EBADPLATFORM), unless the package is optional",
                runtime,
            )
    return list(values)


def npm_admits(current: str, values: list[str]) -> bool:
    """npm-install-checks' checkList: 'any' alone admits all; otherwise no negated entry
    ('!linux') may name the value, and a plain entry must, if there is any."""
    if values == ["any"]:
        return True
    plain = [v for v in values if not v.startswith("!")]
    if f"!{current}" in values:
        return False
    return not plain or current in plain


def all_es_modules(sources: Mapping[str, str]) -> bool:
    """Whether every .js file is an ES module (an import or export statement at its top level).
    Without "type" in package.json, node parses such a file as CommonJS, fails, warns and
    parses it again as an ES module; "type": "module" says so at once. With one CommonJS file
    among them it stays unset, since "module" would break that file (.mjs and .cjs files say
    what they are whatever the type)."""
    scripts = {path: text for path, text in sources.items() if path.endswith(".js")}
    if not scripts or not all("import" in text or "export" in text for text in scripts.values()):
        return False  # a file without the words has no such statement: no parse needed
    # Parsed by the syntax checker, within its budgets, as the syntax check was: never here.
    return all(
        outcome.verdict == "ok" and outcome.es_module for _, outcome in _GRAMMAR.check(scripts)
    )


def _is_range(spec: str) -> bool:
    if len(spec) > _NPM_RANGE_MAX or _NPM_RANGE.fullmatch(spec) is None or _TARBALL.fullmatch(spec):
        return False
    try:
        semantic_version.NpmSpec(spec)
    except Exception:  # ValueError, and AttributeError on some hyphen ranges (its own bug)
        return False
    return True


RUNTIME = NodeRuntime()
