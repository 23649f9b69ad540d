"""Node.js: package.json from {name: semver range}, installed without dev deps or scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import semantic_version

from .. import boundary
from ..boundary import quote
from ..errors import FieldError, InvalidRequest
from .base import (
    GENERATED_FOR_EVERY_RUNTIME,
    BaseImage,
    Dependencies,
    Lock,
    Pinned,
    Rendered,
    Runtime,
    RuntimeSettings,
    with_build_ca,
)
from .npm_lock import NPM_NAME, read_lock
from .treesitter import TreeSitterGrammar

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
IMAGE = BaseImage("nodejs", "node:{version}-bookworm-slim", "Node.js base image.")


class NodeRuntime(Runtime):
    name = "nodejs"
    aliases = ("node", "javascript", "js")
    entry_file = "remediation.js"
    source_suffixes = (".js", ".mjs", ".cjs")
    versions = ("22", "24")
    default_version = "24"
    generated_files = GENERATED_FOR_EVERY_RUNTIME | {"package.json", "package-lock.json"}
    images = (IMAGE,)
    dependencies_description = "{name: range}"
    lock_description = "package-lock.json"
    dependency_example = "@scope/name@^1.2.3"

    def cli_dependencies(self, values: Sequence[str]) -> Dependencies:
        """npm's name@range; a scope's leading '@' is not the separator, no range is '*'."""
        pairs = {}
        for value in values:
            at = value.rfind("@")
            pairs[value[:at] if at > 0 else value] = value[at + 1 :] if at > 0 else "*"
        return pairs

    def dependencies(self, deps: Dependencies, settings: RuntimeSettings) -> Pinned:
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
                or NPM_NAME.fullmatch(name) is None
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

    def lock(self, text: str, deps: Pinned, settings: RuntimeSettings, version: str) -> Lock:
        """A package-lock.json, as npm ci installs it (npm_lock.read_lock)."""
        return read_lock(text, deps)

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
        settings: RuntimeSettings,
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
            f"FROM {settings.image(IMAGE, version)}\n"
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
