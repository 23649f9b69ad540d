"""The OCI store against a real registry (CNCF Distribution), read back with crane."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from function import archive
from function.archive import Archive
from function.errors import ConfigurationError, StorageForbidden, StorageUnavailable
from function.settings import load_settings
from function.stores import failures, open_store
from function.stores.base import ContextRecord, Deletion, Store
from function.stores.oci import OCIStore, client
from function.stores.oci import errors as oci_errors
from function.stores.oci.client import Credentials as DockerCredentials
from function.stores.oci.client import credentials_from_docker_config
from tests.conftest import StartServer
from tests.support.contexts import ROOT, assert_is_the_announced_archive, example
from tests.support.registry import Credentials, Registry

pytestmark = pytest.mark.oci

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WEEK = timedelta(days=7)
FAST_RETRIES = {"retry_attempts": 3, "retry_base_delay_seconds": 0.001}


def oci_settings(registry: Registry, config: Path, prefix: str, **overrides: Any) -> Any:
    return load_settings(
        **{
            "storage": "oci",
            "oci_registry": registry.host,
            "oci_repository": prefix,
            "oci_docker_config": str(config),
            "oci_ca_file": str(registry.ca_path or ""),
            "oci_insecure_http": not registry.tls,
            "namespace": "team-a",
            **FAST_RETRIES,
            **overrides,
        }
    )


@pytest.fixture
def prefix() -> str:
    return f"ctx-{os.urandom(4).hex()}"


@pytest.fixture
def config(registry: Registry, tmp_path: Path) -> Path:
    return registry.docker_config(tmp_path / "docker" / "config.json")


@pytest.fixture
def store(registry: Registry, config: Path, prefix: str) -> Iterator[Store[Any]]:
    opened = open_store("oci", oci_settings(registry, config, prefix))
    yield opened
    opened.close()


def record_for(
    built: Archive, function: str = "fix-disk", created: datetime = NOW, **extra: Any
) -> ContextRecord:
    return ContextRecord.for_archive(
        built,
        namespace="team-a",
        function=function,
        runtime="python",
        runtime_version="3.13",
        created_at=created,
        ttl=WEEK,
        request_id="req-1",
        metadata={"incident": "INC-1"},
        **extra,
    )


def built(text: str = "print('hi')\n") -> Archive:
    return archive.build({"remediation.py": text, "requirements.txt": ""})


def test_a_context_is_a_single_layer_image_that_crane_reads_back_byte_for_byte(
    registry: Registry, store: Store[Any], prefix: str, tmp_path: Path
) -> None:
    context = built()
    stored = store.put_if_absent(context, record_for(context))
    repository = f"{prefix}/team-a/fix-disk"
    digest = stored.storage["digest"]
    assert stored.storage == {
        "backend": "oci",
        "registry": registry.host,
        "repository": repository,
        "tag": context.image_tag,
        "digest": digest,
    }
    assert stored.context_uri == f"oci://{registry.host}/{repository}@{digest}"
    assert not stored.reused

    reference = f"{registry.host}/{repository}@{digest}"
    assert registry.crane("digest", f"{registry.host}/{repository}:{context.image_tag}").stdout
    assert registry.crane("digest", reference).stdout.decode().strip() == digest
    manifest = json.loads(registry.crane("manifest", reference).stdout)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["digest"] == f"sha256:{context.archive_sha256}"
    notes = manifest["annotations"]
    assert notes["dev.build-context.managed-by"] == "build-context"
    assert notes["dev.build-context.content-hash"] == context.content_hash
    config = json.loads(registry.crane("config", reference).stdout)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{context.content_hash}"]

    # The layer blob, as an independent client fetches it, is our archive byte for byte ...
    blob = registry.crane("blob", f"{registry.host}/{repository}@{layer['digest']}").stdout
    assert blob == context.data
    # ... and the image's filesystem (crane export flattens the layers) is the context.
    exported = registry.crane("export", reference, "-").stdout
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers() if m.isfile()}
        assert names == {"remediation.py", "requirements.txt"}
        source = tar.extractfile("remediation.py")
        assert source is not None and source.read() == b"print('hi')\n"
    assert store.get("team-a", "fix-disk", context.content_hash) == context.data


def test_the_same_request_gives_the_same_digest_in_another_process_and_registry(
    registry: Registry, store: Store[Any], prefix: str, tmp_path: Path, config: Path
) -> None:
    """The manifest digest depends on the content only: another process, another time zone,
    another moment and another registry (here, the same one under another prefix) agree."""
    context = built()
    here = store.put_if_absent(context, record_for(context)).storage["digest"]
    script = (
        "import sys, datetime as d\n"
        "from function import archive\n"
        "from function.stores.base import ContextRecord\n"
        "from function.stores.oci import ContextImage\n"
        "a = archive.build({'remediation.py': \"print('hi')\\n\", 'requirements.txt': ''})\n"
        "r = ContextRecord.for_archive(a, namespace='team-a', function='fix-disk',"
        " runtime='python', runtime_version='3.13', created_at=d.datetime.now(d.UTC),"
        " ttl=d.timedelta(days=1), request_id='other', metadata={'x': 'y'})\n"
        "print(ContextImage.of(a, r).digest)\n"
    )
    env = {**os.environ, "TZ": "Pacific/Auckland", "PYTHONPATH": str(ROOT)}
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert there == here
    other = open_store("oci", oci_settings(registry, config, prefix + "-b"))
    later = NOW + timedelta(days=3)
    assert (
        other.put_if_absent(context, record_for(context, created=later)).storage["digest"] == here
    )


def test_reuse_keeps_the_digest_and_created_and_pushes_expiry(
    registry: Registry, store: Store[Any], prefix: str
) -> None:
    context = built()
    first = store.put_if_absent(context, record_for(context))
    again = store.put_if_absent(context, record_for(context, created=NOW + timedelta(days=2)))
    assert again.reused and again.storage == first.storage
    assert again.record.created_at == NOW
    assert again.record.expires_at == NOW + timedelta(days=2) + WEEK
    tags = registry.tags(f"{prefix}/team-a/fix-disk")
    assert sorted(tags) == [context.image_tag, context.image_tag + ".record"]
    # The expiry is what a second client reads (it lives in the registry, not in memory).
    [listed] = list(store.list())
    assert listed.record.expires_at == NOW + timedelta(days=2) + WEEK
    assert listed.record.metadata == {"incident": "INC-1"}


def test_concurrent_identical_requests_leave_one_context(
    registry: Registry, store: Store[Any], prefix: str, config: Path
) -> None:
    context = built("print('many')\n")
    clients = [open_store("oci", oci_settings(registry, config, prefix)) for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: clients[i % 4].put_if_absent(
                    context, record_for(context, created=NOW + timedelta(seconds=i))
                ),
                range(16),
            )
        )
    assert len({r.storage["digest"] for r in results}) == 1
    assert sorted(registry.tags(f"{prefix}/team-a/fix-disk")) == [
        context.image_tag,
        context.image_tag + ".record",
    ]
    assert len(list(store.list())) == 1
    assert store.get("team-a", "fix-disk", context.content_hash) == context.data


def test_concurrent_reuses_keep_created_and_store_one_of_the_promised_expiries(
    registry: Registry, store: Store[Any], prefix: str, config: Path
) -> None:
    """No conditional writes in a registry: of reuses at the same moment, one record is written
    last (docs/oci.md, Races); it is one of theirs, and no reuse moves the expiry back before
    the first context's."""
    context = built("print('refresh')\n")
    first = store.put_if_absent(context, record_for(context)).record
    clients = [open_store("oci", oci_settings(registry, config, prefix)) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda i: clients[i].put_if_absent(
                    context, record_for(context, created=NOW + timedelta(hours=i + 1))
                ),
                range(8),
            )
        )
    assert all(reply.reused and reply.record.created_at == NOW for reply in replies)
    [listed] = list(store.list())
    assert listed.record.expires_at in {reply.record.expires_at for reply in replies}
    assert listed.record.expires_at > first.expires_at
    assert sorted(registry.tags(f"{prefix}/team-a/fix-disk")) == [
        context.image_tag,
        context.image_tag + ".record",
    ]


def test_wrong_credentials_are_storage_forbidden_not_retryable(
    registry: Registry, prefix: str, tmp_path: Path
) -> None:
    config = registry.docker_config(
        tmp_path / "bad" / "config.json", Credentials("builder", "not-the-password")
    )
    store = open_store("oci", oci_settings(registry, config, prefix))
    context = built()
    with pytest.raises(StorageForbidden) as raised:
        store.put_if_absent(context, record_for(context))
    assert not raised.value.retryable
    assert "BUILD_CONTEXT_OCI_DOCKER_CONFIG" in raised.value.message


def test_tls_needs_the_registry_ca(registry: Registry, prefix: str, config: Path) -> None:
    settings = oci_settings(registry, config, prefix).model_copy(update={"oci_ca_file": ""})
    store = OCIStore.from_settings(settings)
    context = built()
    with pytest.raises(StorageForbidden, match="BUILD_CONTEXT_OCI_CA_FILE"):
        store.put_if_absent(context, record_for(context))


def test_plain_http_only_when_asked(tmp_path: Path, prefix: str) -> None:
    """A plain-HTTP registry: refused by default (we speak TLS), served when asked."""
    plain = Registry(tmp_path / "plain", tls=False).start()
    try:
        config = plain.docker_config(tmp_path / "plain-docker" / "config.json")
        context = built()
        settings = oci_settings(plain, config, prefix, oci_insecure_http=False)
        with pytest.raises(StorageForbidden, match="BUILD_CONTEXT_OCI_INSECURE_HTTP"):
            OCIStore.from_settings(settings).put_if_absent(context, record_for(context))
        store = OCIStore.from_settings(oci_settings(plain, config, prefix))
        stored = store.put_if_absent(context, record_for(context))
        reference = f"{plain.host}/{prefix}/team-a/fix-disk@{stored.storage['digest']}"
        assert plain.crane("digest", reference).stdout.decode().strip() == stored.storage["digest"]
    finally:
        plain.stop()


class KillsRegistryOnPut(HTTPAdapter):
    """The real registry is crashed the moment a request matching `when` is about to go out:
    an outage in the middle of a push (the adapter only watches, it answers nothing itself)."""

    def __init__(self, registry: Registry, when: Callable[[PreparedRequest], bool]) -> None:
        super().__init__(max_retries=0)
        self.registry = registry
        self.when = when
        self.fired = False

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if not self.fired and self.when(request):
            self.fired = True
            self.registry.kill()
        return super().send(request, *args, **kwargs)


@pytest.mark.parametrize("step", ["record", "context tag"])
def test_an_outage_mid_push_is_retryable_and_leaves_nothing_visible(
    tmp_path: Path, prefix: str, step: str
) -> None:
    own = Registry(tmp_path / "own").start()
    try:
        config = own.docker_config(tmp_path / "docker" / "config.json")
        store = OCIStore.from_settings(oci_settings(own, config, prefix))
        context = built("print('outage')\n")
        repository = f"{prefix}/team-a/fix-disk"

        def when(request: PreparedRequest) -> bool:
            if request.method != "PUT" or "/manifests/" not in (request.url or ""):
                return False
            reference = (request.url or "").rsplit("/", 1)[1]
            wanted = context.image_tag + (".record" if step == "record" else "")
            return reference == wanted

        killer = KillsRegistryOnPut(own, when)
        store.client.session.mount("https://", killer)
        with pytest.raises(StorageUnavailable) as raised:
            store.put_if_absent(context, record_for(context))
        assert killer.fired and raised.value.retryable
        assert "can be retried" in raised.value.message

        own.start()  # the registry comes back with what it had stored
        tags = own.tags(repository)
        assert context.image_tag not in tags, "a builder must never see a half-pushed context"
        with pytest.raises(KeyError):
            store.get("team-a", "fix-disk", context.content_hash)
        # The retry Knative makes then completes it.
        stored = store.put_if_absent(context, record_for(context))
        assert store.get("team-a", "fix-disk", context.content_hash) == context.data
        reference = f"{own.host}/{repository}@{stored.storage['digest']}"
        blob = own.crane("blob", f"{own.host}/{repository}@sha256:{context.archive_sha256}")
        assert blob.stdout == context.data
        assert own.crane("digest", reference).stdout.decode().strip() == stored.storage["digest"]
    finally:
        own.stop()


def test_a_registry_that_is_down_is_a_retryable_failure(tmp_path: Path, prefix: str) -> None:
    own = Registry(tmp_path / "own")  # never started: nothing listens on its port
    config = own.docker_config(tmp_path / "docker" / "config.json")
    store = OCIStore.from_settings(oci_settings(own, config, prefix))
    store.check()  # warns only: the registry may come up after the function
    context = built()
    with pytest.raises(StorageUnavailable) as raised:
        store.put_if_absent(context, record_for(context))
    assert raised.value.retryable and own.host in raised.value.message


def test_http_created_event_names_the_image_by_digest(
    registry: Registry, config: Path, prefix: str, start_server: StartServer
) -> None:
    server = start_server(
        BUILD_CONTEXT_STORAGE="oci",
        **registry.function_env(prefix, config),
        BUILD_CONTEXT_NAMESPACE="team-a",
    )
    request = example("python")

    data, again = server.send_twice(request)
    repository = f"{prefix}/team-a/{request['lambdaFunction']}"
    digest = data["storage"]["digest"]
    assert data["storage"] == {
        "backend": "oci",
        "registry": registry.host,
        "repository": repository,
        "tag": data["imageTag"],
        "digest": digest,
    }
    assert data["contextUri"] == f"oci://{registry.host}/{repository}@{digest}"
    layer = registry.crane("blob", f"{registry.host}/{repository}@sha256:{data['archiveSha256']}")
    assert_is_the_announced_archive(layer.stdout, data)
    assert (again["reused"], again["contextUri"]) == (True, data["contextUri"])
    assert again["createdAt"] == data["createdAt"]


def test_http_an_unreachable_registry_is_retried_then_retryable(
    tmp_path: Path, prefix: str, start_server: StartServer
) -> None:
    own = Registry(tmp_path / "own")  # never started: nothing listens on its port
    server = start_server(
        BUILD_CONTEXT_STORAGE="oci",
        **own.function_env(prefix, own.docker_config(tmp_path / "docker" / "config.json")),
        BUILD_CONTEXT_RETRY_ATTEMPTS="3",
        BUILD_CONTEXT_RETRY_BASE_DELAY_SECONDS="0.01",
    )

    reply = server.send(example("python"))

    assert reply.type == "buildcontext.failed", reply
    assert (reply.data["reason"], reply.data["retryable"]) == ("StorageUnavailable", True)


def test_token_auth_push_reuse_and_cleanup_listing(tmp_path: Path, prefix: str) -> None:
    """A registry with token auth (the Bearer flow of Docker Hub, Harbor, GHCR, Quay): the store
    gets tokens from the realm with the docker config's credentials, per repository scope."""
    own = Registry(tmp_path / "token", auth="token").start()
    try:
        assert own.tokens is not None
        config = own.docker_config(tmp_path / "docker" / "config.json")
        store = OCIStore.from_settings(oci_settings(own, config, prefix))
        context = built("print('token')\n")
        stored = store.put_if_absent(context, record_for(context))
        assert store.put_if_absent(context, record_for(context)).reused
        assert [item.record.content_hash for item in store.list()] == [context.content_hash]
        issued = len(own.tokens.issued)
        assert issued >= 2  # one per scope: the repository, and the catalog for listing
        reference = f"{own.host}/{prefix}/team-a/fix-disk@{stored.storage['digest']}"
        layer = own.crane("blob", f"{reference.split('@')[0]}@sha256:{context.archive_sha256}")
        assert layer.stdout == context.data
        # Without credentials the token service refuses: a clear, non-retryable failure.
        anonymous = OCIStore.from_settings(
            oci_settings(own, tmp_path / "none.json", prefix, oci_docker_config="")
        )
        with pytest.raises(StorageForbidden):
            anonymous.put_if_absent(context, record_for(context))
    finally:
        own.stop()


# --- settings and credentials (no registry needed) -------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://registry.example.com",
        "registry.example.com/path",
        "registry.example.com\n",
        "Registry.Example.com",
        "registry.example.com:5000:1",
        "r" * 300,
    ],
)
def test_a_registry_setting_that_is_not_a_bare_host_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(storage="oci", oci_registry=value)
    assert raised.value.variable == "BUILD_CONTEXT_OCI_REGISTRY"


@pytest.mark.parametrize("value", ["Build", "a//b", "a/", "-a", "a\n", "a" * 101])
def test_a_repository_prefix_outside_the_distribution_grammar_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(storage="oci", oci_registry="r.example.com", oci_repository=value)
    assert raised.value.variable == "BUILD_CONTEXT_OCI_REPOSITORY"


def test_the_oci_store_needs_a_registry() -> None:
    with pytest.raises(ConfigurationError, match="BUILD_CONTEXT_OCI_REGISTRY"):
        load_settings(storage="configmap", overflow_storage="oci")


def test_credentials_come_from_the_docker_config_entry_of_the_registry(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"robot$ci:s3cr:et").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "other.example.com": {"auth": base64.b64encode(b"no:no").decode()},
                    "https://registry.example.com:5000/v1/": {"auth": auth},
                    "tokens.example.com": {"identitytoken": "refresh-me"},
                }
            }
        )
    )
    found = credentials_from_docker_config(config, "registry.example.com:5000")
    assert found == DockerCredentials(username="robot$ci", password="s3cr:et")
    tokens = credentials_from_docker_config(config, "tokens.example.com")
    assert tokens is not None and tokens.identity_token == "refresh-me"
    assert credentials_from_docker_config(config, "unknown.example.com") is None


@pytest.mark.parametrize(
    "content",
    ["not json", '{"credsStore": "desktop"}', '{"auths": {"r.example.com": {"auth": "%%"}}}'],
)
def test_an_unusable_docker_config_names_the_setting(tmp_path: Path, content: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        credentials_from_docker_config(config, "r.example.com")
    assert raised.value.variable == "BUILD_CONTEXT_OCI_DOCKER_CONFIG"


# --- the documentation ------------------------------------------------------------------------


def test_the_documented_shipwright_build_and_buildkit_pipe_fit_a_real_reply(
    registry: Registry, store: Store[Any], prefix: str, tmp_path: Path
) -> None:
    """docs/oci.md: the Build's image is the contextUri without its scheme, and the documented
    `crane blob` command (run as written) yields the context tarball BuildKit is given."""
    import yaml

    docs = (ROOT / "docs" / "oci.md").read_text()
    context = built("print('docs')\n")
    stored = store.put_if_absent(context, record_for(context))
    reference = stored.context_uri.removeprefix("oci://") if stored.context_uri else ""

    shipwright = docs.split("### Shipwright", 1)[1].split("```yaml\n")[2].split("```", 1)[0]
    build, build_run = yaml.safe_load_all(shipwright)
    source = build["spec"]["source"]
    assert source["type"] == "OCI" and source["ociArtifact"]["prune"] == "Never"
    documented = source["ociArtifact"]["image"]
    params = {p["name"]: p["value"] for p in build["spec"]["paramValues"]}
    assert params["context-image"] == documented  # what verify checks is what is built
    shape = documented.replace("registry.example.com/build-contexts/remediation/fix-disk", "R")
    assert shape == "R@sha256:0123…"
    assert reference == f"{registry.host}/{prefix}/team-a/fix-disk@{stored.storage['digest']}"
    assert build_run["spec"]["build"]["name"] == build["metadata"]["name"]

    buildkit = docs.split("### BuildKit", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    pipe = next(line for line in buildkit.splitlines() if line.startswith("crane blob"))
    command = pipe.split(" | ", 1)[0]
    config = tmp_path / "crane"
    registry.docker_config(config / "config.json")
    env = {
        **os.environ,
        "REF": reference,
        "ARCHIVE": f"sha256:{context.archive_sha256}",
        "PATH": f"{registry.bin_dir}:{os.environ['PATH']}",
        "DOCKER_CONFIG": str(config),
        "SSL_CERT_FILE": str(registry.ca_path),
    }
    piped = subprocess.run(["bash", "-c", command], capture_output=True, env=env, check=True)
    assert piped.stdout == context.data


# --- the registry client's failures, typed once (no registry needed) --------------------------


@pytest.mark.parametrize(
    ("error", "typed", "reason", "retryable"),
    [
        (client.Unavailable("down", 503), failures.Unavailable, "StorageUnavailable", True),
        (client.Denied("no", 401), failures.Forbidden, "StorageForbidden", False),
        (client.Missing("gone", 404), failures.NotFound, "StorageUnavailable", False),
        (client.Refused("big", 413), failures.TooLarge, "ContextTooLarge", False),
        (client.Refused("bad manifest", 400), failures.Rejected, "InternalError", False),
    ],
)
def test_registry_failures_become_typed_failures_with_their_reason(
    error: client.RegistryError, typed: type, reason: str, retryable: bool
) -> None:
    call = oci_errors.Call("push record", "registry.example.com", "build-contexts/a/b")
    translated = call.translate(error, 3)
    assert translated is not None and isinstance(translated, typed)
    assert (translated.reason, translated.retryable) == (reason, retryable)
    assert (
        "build-contexts/a/b" in translated.message or "registry.example.com" in translated.message
    )
    assert oci_errors.RegistryBoundary().transient(error) is retryable
    assert call.translate(ValueError("not the client's"), 1) is None


def test_a_retain_tag_pins_and_deleting_that_tag_unpins(
    registry: Registry, store: Store[Any], prefix: str
) -> None:
    """docs/oci.md, Pinning: `crane tag … TAG.retain` keeps the context from cleanup; `crane
    delete …:TAG.retain` removes only that tag, and the context is cleanup's again."""
    from function.cleanup import CleanupService

    context = built("print('pinned')\n")
    old = NOW - timedelta(days=30)
    store.put_if_absent(context, record_for(context, created=old))
    store.put_if_absent(built("print('newer')\n"), record_for(built("print('newer')\n")))
    image = f"{registry.host}/{prefix}/team-a/fix-disk:{context.image_tag}"
    registry.crane("tag", image, context.image_tag + ".retain")
    settings = load_settings(namespace="team-a", keep_latest=1, cleanup_grace_seconds=0)
    cleanup = CleanupService([store], settings, clock=lambda: NOW)

    kept = cleanup.run().stores[0]
    assert (kept.deleted, kept.retained.get("pinned")) == (0, 1)
    registry.crane("delete", image + ".retain")
    assert store.get("team-a", "fix-disk", context.content_hash) == context.data
    gone = cleanup.run().stores[0]
    assert gone.deleted == 1
    with pytest.raises(KeyError):
        store.get("team-a", "fix-disk", context.content_hash)


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_ca_file_that_cannot_be_loaded_stops_start_up(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    settings = load_settings(storage="oci", oci_registry="r.example.com", oci_ca_file=str(path))
    with pytest.raises(ConfigurationError) as raised:
        open_store("oci", settings)
    assert raised.value.variable == "BUILD_CONTEXT_OCI_CA_FILE"


def test_cleanup_opens_a_few_connections_not_one_per_context(
    store: Store[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a streamed response unread closes its connection: a HEAD read that way cost a
    new connection (a TLS handshake on both sides) for every context deleted. A spy counts the
    sockets the client opens while cleanup deletes 24 contexts, 8 at a time."""
    import urllib3.connection

    from function.cleanup import CleanupService

    for i in range(24):
        context = built(f"print({i})\n")
        store.put_if_absent(context, record_for(context, created=NOW - timedelta(days=30)))
    opened: list[object] = []
    new_connection = urllib3.connection.HTTPConnection._new_conn

    def spy(self: urllib3.connection.HTTPConnection) -> Any:
        opened.append(self)
        return new_connection(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", spy)
    settings = load_settings(namespace="team-a", keep_latest=0, cleanup_grace_seconds=0)
    [summary] = CleanupService([store], settings, clock=lambda: NOW).run().stores
    assert (summary.deleted, summary.errors) == (24, 0)
    assert len(opened) <= settings.cleanup_concurrency + 2, f"{len(opened)} connections"


def test_cleanup_deletes_at_most_the_configured_contexts_at_once(
    registry: Registry, config: Path, prefix: str
) -> None:
    """BUILD_CONTEXT_CLEANUP_CONCURRENCY bounds the contexts deleted at once (and the records
    read while listing). A spy holds each manifest DELETE a moment, so that more at once show."""
    import threading
    import time

    from function.cleanup import CleanupService

    settings = oci_settings(registry, config, prefix, cleanup_concurrency=3)
    store = open_store("oci", settings)
    for i in range(12):
        context = built(f"print({i})\n")
        store.put_if_absent(context, record_for(context, created=NOW - timedelta(days=30)))
    registry_client = store.client  # type: ignore[attr-defined]
    delete_manifest = registry_client.delete_manifest
    in_flight, most = 0, 0
    lock = threading.Lock()

    def spy(repository: str, digest: str) -> bool:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.05)
        try:
            return bool(delete_manifest(repository, digest))
        finally:
            with lock:
                in_flight -= 1

    registry_client.delete_manifest = spy
    rules = load_settings(namespace="team-a", keep_latest=0, cleanup_grace_seconds=0)
    [summary] = CleanupService([store], rules, clock=lambda: NOW).run().stores
    store.close()
    assert (summary.deleted, summary.errors) == (12, 0)
    assert 1 <= most <= 3, f"{most} deletes in flight"


def test_a_reuse_between_cleanups_recheck_and_delete_gets_its_context_back(
    registry: Registry, config: Path, prefix: str
) -> None:
    """docs/oci.md, Races: a request reuses each context after cleanup re-checked it and
    right before cleanup deletes it (the registry has no conditional delete). Cleanup sees
    the record changed once the context is gone, puts the context back and keeps it; with
    four contexts deleted at once, every one of them."""
    cleaner = open_store("oci", oci_settings(registry, config, prefix))
    requests = open_store("oci", oci_settings(registry, config, prefix))
    old = NOW - timedelta(days=30)
    contexts = {}
    for i in range(4):
        context = built(f"print({i})\n")
        stored = cleaner.put_if_absent(context, record_for(context, created=old))
        contexts[str(stored.storage["digest"])] = context
    registry_client = cleaner.client  # type: ignore[attr-defined]
    delete_manifest = registry_client.delete_manifest
    reused: list[bool] = []

    def reuse_first(repository: str, digest: str) -> bool:
        if digest in contexts:  # the context image, not a record
            context = contexts[digest]
            reused.append(requests.put_if_absent(context, record_for(context)).reused)
        return bool(delete_manifest(repository, digest))

    registry_client.delete_manifest = reuse_first
    items = list(cleaner.list())
    outcomes = cleaner.delete_many(items, lambda record: record.expired(NOW))
    assert outcomes == [Deletion.KEPT] * 4 and reused == [True] * 4
    for context in contexts.values():
        assert cleaner.get("team-a", "fix-disk", context.content_hash) == context.data
    [still] = {item.record.expires_at for item in cleaner.list()}
    assert still == NOW + WEEK, "each record is the reuse's, with its later expiry"
    cleaner.close()
    requests.close()
