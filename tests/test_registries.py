"""Each registry owns its axis: every registered runtime and store declares every fact the
rest of the function derives from it or checks it by (the registries' docstrings say what a new
one touches), and nothing outside a store's package imports its insides. The checks are
functions returning the problems found, and each is shown to find them where a fact lacks."""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from function import provenance
from function.contract import BuildContextRequest, Storage
from function.runtimes import DEFAULT, IMAGES, RUNTIMES, Rendered, Runtime, cli_dependencies
from function.runtimes.base import GENERATED_FOR_EVERY_RUNTIME
from function.settings import Settings, env_name
from function.stores import BACKENDS, LOCATIONS, Store, location_reader
from function.stores.filesystem import FilesystemStore

ROOT = Path(__file__).resolve().parents[1]

RUNTIME_FACTS = (
    "name",
    "entry_file",
    "source_suffixes",
    "versions",
    "default_version",
    "generated_files",
    "images",
    "dependencies_description",
    "lock_description",
    "dependency_example",
)


def _declared(runtime: Runtime, problems: list[str]) -> bool:
    for fact in RUNTIME_FACTS:
        if not getattr(runtime, fact, None):
            problems.append(f"{fact} is not declared")
    return not problems


def _image_problems(runtime: Runtime) -> list[str]:
    """Each image is a setting BUILD_CONTEXT_<KEY>_IMAGE with its default and description, and
    provenance records its template under its key."""
    problems = []
    recorded = provenance.internal_parameters(Settings())["images"]
    for image in runtime.images:
        field = Settings.model_fields.get(image.setting)
        if field is None or (field.default, field.description) != (
            image.default,
            image.description,
        ):
            problems.append(f"image {image.key}: not the setting {env_name(image.setting)}")
        if recorded.get(image.key) != image.default:
            problems.append(f"image {image.key}: provenance does not record it")
    return problems


def _render_problems(runtime: Runtime) -> list[str]:
    """Every version's Dockerfile builds FROM the runtime's images as the settings say (so
    that `verify` renders it again from the recorded ones), and writes only generated files."""
    templates: dict[str, Any] = {
        i.setting: f"registry.test/{i.key}:{{version}}-x" for i in runtime.images
    }
    settings = Settings(registry_mirror="mirror.test/", **templates)
    problems = []
    for version in runtime.versions:
        rendered = runtime.render(version, (), settings)
        found = provenance.base_images(rendered.dockerfile)
        wanted = [settings.image(image, version) for image in runtime.images]
        if sorted(set(found)) != sorted(wanted):
            problems.append(f"{version}: the Dockerfile builds FROM {found}, not {wanted}")
        extra = set(rendered.files()) - runtime.generated_files
        if extra:
            problems.append(f"{version}: renders {sorted(extra)}, not in generated_files")
    return problems


def _contract_problems(runtime: Runtime) -> list[str]:
    """The request's schema describes the runtime, its aliases, dependencies and lock file."""
    fields = BuildContextRequest.model_fields
    described = {
        "runtime": [runtime.name, *runtime.aliases],
        "dependencies": [f"{runtime.name}: {runtime.dependencies_description}"],
        "lock_file": [f"{runtime.lock_description} ({runtime.name})"],
    }
    return [
        f"the request's {field} does not describe {text!r}"
        for field, texts in described.items()
        for text in texts
        if text not in (fields[field].description or "")
    ]


def _cli_problems(runtime: Runtime) -> list[str]:
    """`create -d EXAMPLE` (by the name and by every alias) is one dependency it accepts."""
    problems = []
    for name in (runtime.name, *runtime.aliases):
        try:
            deps = cli_dependencies([runtime.dependency_example], name)
            pinned = runtime.dependencies(deps, Settings())
        except Exception as error:
            problems.append(f"create -r {name} -d {runtime.dependency_example}: {error}")
            continue
        if len(pinned) != 1:
            problems.append(f"create -r {name} -d {runtime.dependency_example}: {pinned}")
    return problems


def runtime_problems(runtime: Runtime) -> list[str]:
    problems: list[str] = []
    if not _declared(runtime, problems):
        return problems
    if runtime.default_version not in runtime.versions:
        problems.append(f"default_version {runtime.default_version} is not in versions")
    if not runtime.is_source(runtime.entry_file):
        problems.append(f"the entry file {runtime.entry_file} is not a source file")
    images = _image_problems(runtime)  # rendering needs the image settings
    rendering = images or _render_problems(runtime)
    return problems + rendering + _contract_problems(runtime) + _cli_problems(runtime)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_every_runtime_declares_every_fact(name: str) -> None:
    assert runtime_problems(RUNTIMES[name]) == []


def test_names_aliases_and_image_keys_are_unique_and_the_default_is_registered() -> None:
    names = [n for r in RUNTIMES.values() for n in (r.name, *r.aliases)]
    assert len(names) == len(set(names)) and all(n == n.lower() for n in names)
    keys = [image.key for image in IMAGES]
    assert len(keys) == len(set(keys))
    assert RUNTIMES[DEFAULT.name] is DEFAULT
    assert BuildContextRequest.model_fields["runtime"].default == DEFAULT.name


def _incomplete() -> Runtime:
    """A runtime as someone adding one might leave it: no images declared, a hard-coded base
    image, no descriptions, no dependency example (its behaviour: whatever the methods take,
    nothing checked)."""

    def render(self: Runtime, *args: Any, **kwargs: Any) -> Rendered:
        return Rendered("FROM busybox\n", {"stub.lock": ""})

    facts = {
        "name": "stub",
        "entry_file": "remediation.stub",
        "source_suffixes": (".stub",),
        "versions": ("1",),
        "default_version": "1",
        "generated_files": GENERATED_FOR_EVERY_RUNTIME,
    }
    nothing = {m: lambda self, *args, **kwargs: () for m in ("dependencies", "source_errors")}
    methods = {**nothing, "lock": lambda self, *args, **kwargs: {}, "render": render}
    stub: type[Runtime] = type("Stub", (Runtime,), {**facts, **methods})
    return stub()


def test_a_runtime_that_lacks_a_fact_is_found_out() -> None:
    incomplete = _incomplete()
    assert runtime_problems(incomplete) == [
        "images is not declared",
        "dependencies_description is not declared",
        "lock_description is not declared",
        "dependency_example is not declared",
    ]
    # Declared, but as facts nothing else knows: no setting, not in the schema, not rendered.
    from function.runtimes.base import BaseImage

    incomplete.images = (BaseImage("stub", "stub:{version}", "Stub base image."),)
    incomplete.dependencies_description = "anything"
    incomplete.lock_description = "stub.lock"
    incomplete.dependency_example = "x"
    problems = runtime_problems(incomplete)
    assert problems == [
        "image stub: not the setting BUILD_CONTEXT_STUB_IMAGE",
        "image stub: provenance does not record it",
        "the request's runtime does not describe 'stub'",
        "the request's dependencies does not describe 'stub: anything'",
        "the request's lock_file does not describe 'stub.lock (stub)'",
        "create -r stub -d x: ()",
    ], problems
    # With an image the settings know (python's), what the Dockerfile makes of it.
    incomplete.images = RUNTIMES["python"].images
    assert _render_problems(incomplete) == [
        "1: the Dockerfile builds FROM ['busybox'], not ['mirror.test/registry.test/python:1-x']",
        "1: renders ['stub.lock'], not in generated_files",
    ]


# --- stores ------------------------------------------------------------------------------


def _choices(model: type[BaseModel], field: str) -> set[str]:
    return set(typing.get_args(model.model_fields[field].annotation))


def _public(where: str) -> Any:
    """What a registry entry names: a public name of a store's package (or module), never a
    module inside it, which would be the registry reaching into the store."""
    module, _, name = where.partition(":")
    package = importlib.import_module(module)
    public = getattr(package, "__all__", [n for n in vars(package) if not n.startswith("_")])
    assert module.count(".") == 2 and name in public, f"{where}: not a public name"
    return getattr(package, name)


def store_problems(backend: str, store: type[Store[Any]]) -> list[str]:
    """A whole store, built from the settings, that keeps the provenance envelope and declares
    its settings and the page that documents each; the settings and the reply accept it."""
    problems = [] if store.backend == backend else [f"its backend is {store.backend}"]
    if inspect.isabstract(store) or not inspect.ismethod(getattr(store, "from_settings", None)):
        problems.append("not a whole store with from_settings(settings, telemetry)")
    if store.get_provenance is Store.get_provenance:
        problems.append("keeps no provenance envelope (get_provenance)")
    for model, field in ((Settings, "storage"), (Storage, "backend")):
        if backend not in _choices(model, field):
            problems.append(f"{model.__name__}.{field} does not accept {backend!r}")
    declared = [fact for fact in ("setting_names", "docs_page") if getattr(store, fact, None)]
    if len(declared) < 2:
        return [*problems, "setting_names and docs_page are not both declared"]
    page = ROOT / store.docs_page
    text = page.read_text() if page.is_file() else ""
    if not text:
        problems.append(f"{store.docs_page} does not exist")
    prefixed = {f for f in Settings.model_fields if f.startswith(f"{backend}_")}
    for setting in sorted(prefixed | set(store.setting_names)):
        if setting not in store.setting_names or setting not in Settings.model_fields:
            problems.append(f"{setting} is not both declared and a setting")
        elif text and env_name(setting) not in text:
            problems.append(f"{store.docs_page} does not document {env_name(setting)}")
    return problems


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_store_declares_every_fact(backend: str) -> None:
    assert store_problems(backend, _public(BACKENDS[backend])) == []


def test_the_settings_and_the_reply_name_the_registered_stores_and_verify_reads_theirs() -> None:
    assert _choices(Settings, "storage") == set(BACKENDS) == _choices(Storage, "backend")
    assert _choices(Settings, "overflow_storage") - {""} <= set(BACKENDS)
    packages = {where.partition(":")[0] for where in BACKENDS.values()}
    for scheme, where in LOCATIONS.items():
        assert where.partition(":")[0] in packages and callable(_public(where)), where
        assert location_reader(f"{scheme}bucket/key") is _public(where)


def test_a_store_that_lacks_a_fact_is_found_out() -> None:
    class Half(FilesystemStore):
        """A new store as it might be left: the envelope not kept, its setting not added to
        settings.py, no page, its name in neither the settings' choices nor the reply's."""

        backend = "gcs"
        get_provenance = Store.get_provenance
        setting_names = ("gcs_bucket",)
        docs_page = "docs/gcs.md"

    assert store_problems("gcs", Half) == [
        "keeps no provenance envelope (get_provenance)",
        "Settings.storage does not accept 'gcs'",
        "Storage.backend does not accept 'gcs'",
        "docs/gcs.md does not exist",
        "gcs_bucket is not both declared and a setting",
    ]

    class Undeclared(Half):
        docs_page = ""

    assert store_problems("gcs", Undeclared)[-1] == (
        "setting_names and docs_page are not both declared"
    )
    assert store_problems("s3", _public(BACKENDS["filesystem"]))[0] == "its backend is filesystem"
    with pytest.raises(AssertionError, match="not a public name"):
        _public("function.stores.s3.store:S3Store")


# --- imports -----------------------------------------------------------------------------


def _imported(module: str, is_package: bool, tree: ast.Module) -> set[str]:
    """Every module name a module's imports may reach: `from X import y` reaches X and X.y."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            found |= {origin} | {f"{origin}.{alias.name}" for alias in node.names}
    return found


def store_import_problems(sources: Mapping[str, tuple[bool, str]]) -> list[str]:
    """Imports of a store's module (or anything in its package) from outside it: `sources`
    maps a module name to (is a package, its text). The registry names stores as strings."""
    stores = {where.partition(":")[0] for where in (*BACKENDS.values(), *LOCATIONS.values())}
    problems = []
    for module, (is_package, text) in sorted(sources.items()):
        for target in sorted(_imported(module, is_package, ast.parse(text))):
            for store in stores:
                inside = module == store or module.startswith(f"{store}.")
                if not inside and (target == store or target.startswith(f"{store}.")):
                    problems.append(f"{module} imports {target}")
    return problems


def _function_sources() -> dict[str, tuple[bool, str]]:
    sources = {}
    for path in sorted((ROOT / "function").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        sources[module] = (is_package, path.read_text())
    return sources


def test_nothing_outside_a_store_imports_its_insides() -> None:
    assert store_import_problems(_function_sources()) == []


def test_an_import_of_a_stores_insides_is_found_out() -> None:
    """As function/ had them: the limits took the filesystem store's lock helper, `verify`'s
    locations the S3 and OCI clients, and the S3 provenance sat beside its package."""
    assert store_import_problems(
        {
            "function.limits": (False, "from .stores.filesystem import open_lock\n"),
            "function.locations": (
                False,
                "def _oci():\n    from .stores.oci.client import DIGEST\n",
            ),
            "function.stores.s3_provenance": (False, "from .s3 import S3Store\n"),
            "function.stores.s3.provenance": (False, "from .store import S3Store\n"),
            "function.stores": (True, "from . import base\n"),
        }
    ) == [
        "function.limits imports function.stores.filesystem",
        "function.limits imports function.stores.filesystem.open_lock",
        "function.locations imports function.stores.oci.client",
        "function.locations imports function.stores.oci.client.DIGEST",
        "function.stores.s3_provenance imports function.stores.s3",
        "function.stores.s3_provenance imports function.stores.s3.S3Store",
    ]
