"""Every store keeps the provenance envelope next to the context, the reply says where, the
stored pair verifies, and cleanup deletes both: over real HTTP, with the real S3-compatible
server and the real kube-apiserver."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.conftest import StartServer
from tests.support.cli import run_cli, sweep
from tests.support.contexts import ROOT, example
from tests.support.kube import KubeAPIServer
from tests.support.registry import Registry
from tests.support.seaweed import SeaweedS3
from tests.support.server import FunctionServer, Reply
from tests.test_provenance import write_key

FAST_RETRIES = {
    "BUILD_CONTEXT_RETRY_ATTEMPTS": "2",
    "BUILD_CONTEXT_RETRY_BASE_DELAY_SECONDS": "0.01",
}


def _create_signed(
    start_server: StartServer,
    tmp_path: Path,
    key_kind: str,
    store_env: dict[str, str],
    request: dict[str, Any],
) -> tuple[FunctionServer, dict[str, str], Path, Reply]:
    """A server on `store_env` that signs with a new key of `key_kind`, its environment (for
    the command line), the public key, and its signed reply to `request`, which it created."""
    private, public = write_key(tmp_path, key_kind)
    env = {**store_env, "BUILD_CONTEXT_SIGNING_KEY_FILE": str(private)}
    server = start_server(**env)
    reply = server.send(request)
    assert reply.type == "buildcontext.created", reply
    assert reply.data["provenance"]["signed"] is True
    return server, env, public, reply


@pytest.mark.s3
def test_s3_keeps_the_envelope_beside_the_archive_and_cleanup_deletes_both(
    seaweed: SeaweedS3, start_server: StartServer, tmp_path: Path
) -> None:
    admin = seaweed.client()
    bucket = f"prov-{uuid.uuid4().hex[:10]}"
    admin.create_bucket(Bucket=bucket)
    store = {"BUILD_CONTEXT_STORAGE": "s3", **seaweed.function_env(bucket)}
    _, env, public, reply = _create_signed(
        start_server, tmp_path, "ed25519", store, example("python-dependencies")
    )
    where = reply.data["provenance"]["envelope"]
    archive_key = reply.data["storage"]["key"]
    assert where["bucket"] == bucket and where["key"] == archive_key.replace(
        ".tar.gz", ".dsse.json"
    )

    # The init container's way: both read from S3, the verified archive written for kaniko.
    done = run_cli(
        "verify",
        reply.data["contextUri"],
        "--envelope",
        f"s3://{bucket}/{where['key']}",
        "--public-key",
        str(public),
        "--output",
        str(tmp_path / "workspace.tar.gz"),
        "--expect-archive-sha256",
        reply.data["archiveSha256"],
        "--expect-function",
        reply.data["lambdaFunction"],
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "workspace.tar.gz").read_bytes() == admin.get_object(
        Bucket=bucket, Key=archive_key
    )["Body"].read()

    # Listing sees the archive only; cleanup deletes the archive and then its envelope.
    summary = sweep(tmp_path, {**env, **FAST_RETRIES})
    assert summary["stores"][0]["scanned"] == 1 and summary["stores"][0]["deleted"] == 1
    left = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in left if not o["Key"].endswith(".claim")] == []


@pytest.mark.oci
def test_oci_refers_the_envelope_to_the_context_image_and_cleanup_deletes_both(
    registry: Registry, start_server: StartServer, tmp_path: Path
) -> None:
    prefix = f"prov-{uuid.uuid4().hex[:10]}"
    config = registry.docker_config(tmp_path / "docker" / "config.json")
    store = {
        "BUILD_CONTEXT_STORAGE": "oci",
        **registry.function_env(prefix, config),
        "BUILD_CONTEXT_NAMESPACE": "team-a",
    }
    request = example("python-dependencies")
    server, env, public, reply = _create_signed(start_server, tmp_path, "ed25519", store, request)
    storage, where = reply.data["storage"], reply.data["provenance"]["envelope"]
    assert where["tag"] == f"{reply.data['imageTag']}.dsse"
    assert where["repository"] == storage["repository"]
    image = f"{registry.host}/{storage['repository']}"

    # A referrer of the context image: its subject is the image the reply names.
    manifest = json.loads(registry.crane("manifest", f"{image}@{where['digest']}").stdout)
    assert manifest["subject"]["digest"] == storage["digest"]
    assert manifest["artifactType"] == "application/vnd.dsse.envelope.v1+json"
    envelope = registry.crane("blob", f"{image}@{manifest['layers'][0]['digest']}").stdout
    (tmp_path / "provenance.dsse.json").write_bytes(envelope)
    (tmp_path / "context.tar.gz").write_bytes(
        registry.crane("blob", f"{image}@sha256:{reply.data['archiveSha256']}").stdout
    )
    done = run_cli(
        "verify",
        str(tmp_path / "context.tar.gz"),
        "--envelope",
        str(tmp_path / "provenance.dsse.json"),
        "--public-key",
        str(public),
        "--expect-content-hash",
        reply.data["contentHash"],
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr

    again = server.send(request)
    assert again.data["reused"] is True
    assert again.data["provenance"] == reply.data["provenance"]

    # Listing counts the context once (the envelope tag is ours, not a pin); cleanup deletes
    # the context and then its envelope.
    summary = sweep(tmp_path, {**env, **FAST_RETRIES})
    assert summary["stores"][0]["scanned"] == 1 and summary["stores"][0]["deleted"] == 1
    gone = registry.crane("manifest", f"{image}:{where['tag']}", check=False)
    assert gone.returncode != 0
    gone = registry.crane("manifest", f"{image}@{where['digest']}", check=False)
    assert gone.returncode != 0


@pytest.mark.kube
def test_configmap_holds_the_envelope_beside_the_archive_and_cleanup_deletes_both(
    kube: KubeAPIServer, start_server: StartServer, tmp_path: Path
) -> None:
    namespace = f"prov-{uuid.uuid4().hex[:10]}"
    with kube.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": namespace}})
        store = {"BUILD_CONTEXT_STORAGE": "configmap", **kube.function_env(namespace)}
        _, env, public, reply = _create_signed(
            start_server, tmp_path, "p256", store, example("nodejs")
        )
        where = reply.data["provenance"]["envelope"]
        assert where == {**reply.data["storage"], "key": "provenance.dsse.json"}

        # Mounted at /workspace, the ConfigMap is these two files: what the init container reads.
        stored = core.read_namespaced_config_map(where["configMap"], namespace)
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        for key, value in stored.binary_data.items():
            (workspace / key).write_bytes(base64.b64decode(value))
        assert sorted(stored.binary_data) == ["context.tar.gz", "provenance.dsse.json"]
        done = run_cli(
            "verify",
            str(workspace / "context.tar.gz"),
            "--envelope",
            str(workspace / "provenance.dsse.json"),
            "--public-key",
            str(public),
            "--expect-archive-sha256",
            reply.data["archiveSha256"],
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr

        summary = sweep(tmp_path, {**env, **FAST_RETRIES})
        assert summary["stores"][0]["deleted"] == 1
        left = core.list_namespaced_config_map(namespace).items
        assert where["configMap"] not in [item.metadata.name for item in left]


DOCS = ROOT / "docs"


def test_every_kaniko_example_uses_one_pinned_image_of_the_maintained_fork() -> None:
    images = {
        line.split("image:", 1)[1].strip()
        for page in (*DOCS.glob("*.md"), ROOT / "README.md")
        for line in page.read_text().splitlines()
        if "image:" in line and "kaniko" in line
    }
    assert images == {"ghcr.io/osscontainertools/kaniko:v1.28.5"}


@pytest.mark.kube
def test_the_documented_kaniko_job_verifies_the_mounted_context_before_building(
    kube: KubeAPIServer,
) -> None:
    section = (DOCS / "deploy.md").read_text().split("## Building the image from a context", 1)[1]
    manifest = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    namespace = f"job-{uuid.uuid4().hex[:10]}"
    with kube.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespace({"metadata": {"name": namespace}})
        created = kubernetes.client.BatchV1Api(client).create_namespaced_job(
            namespace,
            yaml.safe_load(manifest.replace("IMAGE_TAG", "sha256-0123").replace("VERSION", "1")),
            dry_run="All",
        )
    pod = created.spec.template.spec
    (verify,) = pod.init_containers
    (kaniko,) = pod.containers
    mounts = {m.name: m.mount_path for m in verify.volume_mounts}
    assert verify.args[:5] == ["python", "-m", "function", "verify", "/store/context.tar.gz"]
    assert f"{mounts['store']}/provenance.dsse.json" in verify.args
    assert mounts["public-keys"] in verify.args
    # kaniko reads the bytes verify checked and wrote, never the mounted ConfigMap itself
    assert verify.args[verify.args.index("--output") + 1] == "/workspace/context.tar.gz"
    assert "--context=tar:///workspace/context.tar.gz" in kaniko.args
    assert {m.name: m.mount_path for m in kaniko.volume_mounts}["workspace"] == mounts["workspace"]
    assert "store" not in {m.name for m in kaniko.volume_mounts}
    for flag in ("--expect-archive-sha256", "--expect-content-hash", "--expect-function"):
        assert flag in verify.args
