"""No module names a runtime or a store but its own: a new one (Java, GCS) is its module or
package, its registry line and the few places `ALLOWED` gives with their reason, and nothing
else in function/ has to learn its name. Names are read from the code (string values, the
parts of identifiers, imports), not from docstrings or comments, which may give examples."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from function.runtimes import RUNTIMES
from function.stores import BACKENDS, Store

ROOT = Path(__file__).resolve().parents[1]

ALLOWED = {
    "function.settings": (
        {"filesystem", "fs", "configmap", "s3", "oci"},
        "one settings model holds every store's fields and checks, loaded before any store; "
        "each store lists its own in setting_names (test_registries checks them)",
    ),
    "function.contract": (
        {"filesystem", "configmap", "s3", "oci"},
        "the reply schema's Storage.backend enum (test_registries checks it is BACKENDS)",
    ),
    "function.syntax_parse": (
        {"javascript", "go", "python"},
        "the tree-sitter grammars by language: the checker process loads only them, never the "
        "runtime modules (a runtime names its grammar by this key)",
    ),
    "function.docs": ({"configmap"}, "`settings --format configmap`: Knative's, not the store"),
    "function.__main__": ({"configmap"}, "`settings --format configmap`: Knative's, not the store"),
}


def owners() -> dict[str, tuple[set[str], set[str]]]:
    """Each runtime's and store's (what names it as a value, as a part of an identifier):
    values are its name, aliases and URL scheme; identifier parts its name and the first word
    of its settings (`fs_root`) and image keys (`go_build`), which are too specific to be
    ordinary words (an alias such as `node` or `js` is not)."""
    found = {}
    for name, runtime in RUNTIMES.items():
        keys = {image.key.split("_")[0] for image in runtime.images}
        found[f"runtime {name}"] = ({name, *runtime.aliases}, {name} | keys)
    for backend, where in BACKENDS.items():
        store = where.partition(":")[0].rpartition(".")[2]
        prefixes = {s.split("_")[0] for s in _store_class(where).setting_names}
        found[f"store {backend}"] = ({backend, store}, {backend, store} | prefixes)
    return found


def _store_class(where: str) -> type[Store[Any]]:
    module, _, name = where.partition(":")
    store: type[Store[Any]] = getattr(importlib.import_module(module), name)
    return store


def _docstrings(tree: ast.Module) -> set[int]:
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def _words(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """("value" | "part", word) for every string value and identifier part of the code."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            value = re.fullmatch(r"([a-z0-9]+)(?:://.*)?", node.value, re.S)
            if value:
                yield "value", value.group(1)
        elif isinstance(node, ast.ImportFrom):
            for part in (node.module or "").split("."):
                yield "part", part
            for alias in node.names:
                yield from (("part", p) for p in alias.name.lower().split("_"))
        else:
            for identifier in _identifiers(node):
                yield from (("part", p) for p in identifier.lower().split("_"))


def _identifiers(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, ast.Import):
        return [part for alias in node.names for part in alias.name.split(".")]
    return []


def _home(module: str) -> str | None:
    """The one runtime or store a module may name: a store's package or module names that
    store, a runtime's helper module only one runtime (its own); the registries any of theirs."""
    parts = module.split(".")
    if parts[:2] == ["function", "stores"] and len(parts) > 2:
        return f"store {parts[2]}" if parts[2] in BACKENDS else ""
    if parts[:2] == ["function", "runtimes"]:
        return None if len(parts) == 2 else "runtime *"
    return ""


def naming_problems(sources: Mapping[str, str]) -> list[str]:
    """`sources` maps a module name to its text: where a module names a runtime or a store
    that is not its own."""
    known = owners()
    problems = []
    for module, text in sorted(sources.items()):
        home = _home(module)
        if home is None or module == "function.stores":
            continue  # the registries name what they register
        allowed = ALLOWED.get(module, (set(), ""))[0]
        words = set(_words(ast.parse(text)))
        named = [
            owner
            for owner, (values, parts) in known.items()
            if any(
                (kind == "value" and word in values) or (kind == "part" and word in parts)
                for kind, word in words
                if word not in allowed
            )
        ]
        problems += [f"{module} names {owner}" for owner in _foreign(home, sorted(named))]
    return problems


def _foreign(home: str, named: list[str]) -> list[str]:
    if home != "runtime *":
        return [owner for owner in named if owner != home]
    runtimes = [owner for owner in named if owner.startswith("runtime ")]
    stores = [owner for owner in named if owner.startswith("store ")]
    return [*(runtimes if len(runtimes) > 1 else []), *stores]


def _function_sources() -> dict[str, str]:
    sources = {}
    for path in sorted((ROOT / "function").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[module] = path.read_text()
    return sources


def test_no_module_names_a_runtime_or_a_store_but_its_own() -> None:
    assert naming_problems(_function_sources()) == []


def test_every_allowance_is_still_needed() -> None:
    sources = _function_sources()
    for module, (names, _reason) in ALLOWED.items():
        used = {word for _kind, word in _words(ast.parse(sources[module]))}
        assert names <= used, f"{module} no longer names {sorted(names - used)}: drop it"


def test_a_module_that_names_one_is_found_out() -> None:
    """As main had them: the limits chose their lock folder by the filesystem store's name,
    __main__ parsed nodejs's `-d`, provenance listed the runtimes' image settings, and the
    default runtime was "python" in the outcome's metrics label."""
    assert naming_problems(
        {
            "function.limits": 'if settings.storage == "filesystem":\n    pass\n',
            "function.__main__": 'if found.name != "nodejs":\n    pass\n',
            "function.provenance": "IMAGE_SETTINGS = (settings.go_build_image,)\n",
            "function.outcomes": 'runtime = data.get("runtime", "python")\n',
            "function.locations": "from .stores.oci.client import DIGEST\n",
            "function.stores.base": 'SCHEME = "s3://"\n',
            "function.stores.s3.store": "from ..oci import RegistryClient\n",
            "function.runtimes.npm_lock": "from .python import RUNTIME\nfrom .go import RUNTIME\n",
            "function.docs": '"""A docstring may say python, nodejs or s3."""\nfmt = "configmap"\n',
        }
    ) == [
        "function.__main__ names runtime nodejs",
        "function.limits names store filesystem",
        "function.locations names store oci",
        "function.outcomes names runtime python",
        "function.provenance names runtime go",
        "function.runtimes.npm_lock names runtime go",
        "function.runtimes.npm_lock names runtime python",
        "function.stores.base names store s3",
        "function.stores.s3.store names store oci",
    ]
