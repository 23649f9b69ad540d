"""Node.js: package.json from {name: semver range}, installed without dev deps or scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import semantic_version
import tree_sitter_javascript

from .. import boundary
from ..boundary import quote
from ..errors import FieldError, InvalidRequest
from ..settings import Settings
from .base import Dependencies, Pinned, Rendered, Runtime, duplicates, refuse
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
_GRAMMAR = TreeSitterGrammar(tree_sitter_javascript.language(), "JavaScript")


class NodeRuntime(Runtime):
    name = "nodejs"
    aliases = ("node", "javascript", "js")
    entry_file = "remediation.js"
    source_suffixes = (".js", ".mjs", ".cjs")
    versions = ("22", "24")
    default_version = "24"
    generated_files = frozenset({"Dockerfile", "package.json"})

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
        problems += duplicates([(i, n) for i, n, _ in pairs])
        refuse(problems, self.name)
        return tuple(sorted((n, s) for _, n, s in pairs))

    def source_errors(self, path: str, text: str, version: str) -> list[FieldError]:
        return _GRAMMAR.first_error(path, _GRAMMAR.parse(text))

    def tool_file_problem(self, path: str) -> str | None:
        if path.split("/", 1)[0] == "node_modules":
            return (
                "is in node_modules/, where npm installs the dependencies: it would replace "
                "installed packages; send your own modules in another folder"
            )
        if path in ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml"):
            return "is a lockfile that package managers read as install instructions"
        return None

    def render(self, version: str, deps: Pinned, settings: Settings) -> Rendered:
        package = {
            "name": "remediation",
            "version": "1.0.0",
            "private": True,
            "main": self.entry_file,
            "dependencies": dict(deps),
        }
        install = (
            "COPY package.json ./\n"
            "RUN npm install --omit=dev --ignore-scripts --no-package-lock "
            "&& npm cache clean --force\n"
            if deps
            else ""
        )
        dockerfile = (
            f"FROM {settings.image(settings.nodejs_image, version)}\n"
            "ENV NODE_ENV=production \\\n"
            "    NPM_CONFIG_UPDATE_NOTIFIER=false \\\n"
            "    NPM_CONFIG_FUND=false \\\n"
            "    NPM_CONFIG_AUDIT=false\n"
            "WORKDIR /app\n"
            f"{install}"
            "COPY . ./\n"
            "USER 10001:0\n"
            f'CMD ["node", "{self.entry_file}"]\n'
        )
        return Rendered(dockerfile, {"package.json": json.dumps(package, indent=2) + "\n"})


def _is_range(spec: str) -> bool:
    if len(spec) > _NPM_RANGE_MAX or _NPM_RANGE.fullmatch(spec) is None or _TARBALL.fullmatch(spec):
        return False
    try:
        semantic_version.NpmSpec(spec)
    except Exception:  # ValueError, and AttributeError on some hyphen ranges (its own bug)
        return False
    return True


RUNTIME = NodeRuntime()
