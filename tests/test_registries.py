"""Each registry owns its axis: every registered runtime declares every fact the rest of the
function derives from it, so that adding one is its module and one line (runtimes/__init__.py
says what else). The checks are functions returning the problems found, and each is shown to
find them in a runtime that lacks a fact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from function import provenance
from function.contract import BuildContextRequest
from function.errors import FieldError
from function.runtimes import DEFAULT, IMAGES, RUNTIMES, Rendered, Runtime, cli_dependencies
from function.runtimes.base import GENERATED_FOR_EVERY_RUNTIME, Lock, Pinned
from function.settings import Settings, env_name

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


class _Incomplete(Runtime):
    """A runtime as someone adding one might leave it: no images declared, a hard-coded base
    image, no descriptions, no dependency example."""

    name = "stub"
    entry_file = "remediation.stub"
    source_suffixes = (".stub",)
    versions = ("1",)
    default_version = "1"
    generated_files = GENERATED_FOR_EVERY_RUNTIME

    def dependencies(self, deps: Any, settings: Settings) -> Pinned:
        return ()

    def source_errors(self, path: str, text: str, version: str) -> list[FieldError]:
        return []

    def lock(self, text: str, deps: Pinned, settings: Settings, version: str) -> Lock:
        return {}

    def render(
        self,
        version: str,
        deps: Pinned,
        settings: Settings,
        lock: Lock | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> Rendered:
        return Rendered("FROM busybox\n", {"stub.lock": ""})


def test_a_runtime_that_lacks_a_fact_is_found_out() -> None:
    incomplete = _Incomplete()
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
