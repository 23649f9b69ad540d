"""Stores under test, for tests that must hold for every backend (cleanup first of all).

A backend joins by adding an opener to `OPENERS` (and a `pytest.param` to the `store` fixture of
the test module): it yields a `StoreUnderTest` whose `pin` and `plant_foreign` do what a user
or a neighbour would really do in that store.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from function import archive
from function import record as records
from function.archive import Archive
from function.settings import Settings, load_settings
from function.stores.base import ContextRecord, Store
from function.stores.filesystem import RECORD, FilesystemStore
from tests.support.records import FAST_RETRIES
from tests.support.records import record as context_record

HOME = "team-a"
EXTRA = "team-b"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


class SimulatedClock:
    """The clock the code takes as a dependency; tests move it instead of sleeping."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class StoreUnderTest:
    """One backend, with what a test needs beyond the Store interface."""

    def __init__(
        self,
        client: Store[Any],
        second_client: Callable[[], Store[Any]],
        settings: dict[str, Any],
    ) -> None:
        self.client = client
        self._second_client = second_client
        self._settings = settings
        self._serial = itertools.count()
        self._archives: dict[str, Archive] = {}

    @property
    def backend(self) -> str:
        return self.client.backend

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(**{**self._settings, **overrides})

    def second_client(self) -> Store[Any]:
        """Another, independent client on the same storage: what a second pod would hold."""
        return self._second_client()

    def built(self, function: str) -> Archive:
        return archive.build({"remediation.py": f"# {function} #{next(self._serial)}\n"})

    def put(
        self,
        function: str,
        created: datetime,
        ttl: timedelta = WEEK,
        namespace: str = HOME,
        built: Archive | None = None,
        client: Store[Any] | None = None,
    ) -> ContextRecord:
        built = built or self.built(function)
        self._archives[built.content_hash] = built
        wanted = context_record(
            built,
            created,
            ttl,
            namespace=namespace,
            function=function,
            request_id=f"req-{function}",
        )
        return (client or self.client).put_if_absent(built, wanted).record

    def put_many(self, specs: list[tuple[str, datetime, timedelta]]) -> list[ContextRecord]:
        """Many contexts at once (threads: the stores are I/O bound)."""
        built = [self.built(function) for function, _, _ in specs]
        with ThreadPoolExecutor(16) as pool:
            return list(
                pool.map(lambda spec, b: self.put(spec[0], spec[1], spec[2], built=b), specs, built)
            )

    def reuse(self, record: ContextRecord, at: datetime, client: Store[Any] | None = None) -> bool:
        """What a request with identical content does: put again; True when it was reused."""
        fresh = replace(record, created_at=at, expires_at=at + WEEK, retain=False)
        built = self._archives[record.content_hash]
        return (client or self.client).put_if_absent(built, fresh).reused

    def exists(self, record: ContextRecord) -> bool:
        try:
            self.client.get(record.namespace, record.function, record.content_hash)
        except KeyError:
            return False
        return True

    def pin(self, record: ContextRecord) -> None:
        raise NotImplementedError

    def plant_foreign(self) -> Callable[[], bool]:
        """Put things in the same storage that are not ours; returns 'are they all still there'."""
        raise NotImplementedError


def _elsewhere(built: Archive) -> ContextRecord:
    """Ours in form, long expired, but in a namespace this deployment does not serve."""
    return context_record(
        built, T0 - 400 * DAY, WEEK, namespace="team-z", function="payments", request_id="req"
    )


class FilesystemUnderTest(StoreUnderTest):
    def __init__(self, root: Path) -> None:
        settings = {
            "storage": "filesystem",
            "fs_root": root,
            "namespace": HOME,
            "allowed_namespaces": EXTRA,
        }
        super().__init__(FilesystemStore(root), lambda: FilesystemStore(root), settings)
        self.root = root
        self.client.check()

    def folder(self, record: ContextRecord) -> Path:
        return self.root / record.namespace / record.function / record.content_hash

    def pin(self, record: ContextRecord) -> None:
        """As documented: set "retain": true in the context's context.json."""
        path = self.folder(record) / RECORD
        data = json.loads(path.read_text())
        data["retain"] = True
        temp = path.with_name(".pin.json")
        temp.write_text(json.dumps(data))
        os.replace(temp, path)

    def plant_foreign(self) -> Callable[[], bool]:
        long_ago = (T0 - 400 * DAY).timestamp()
        foreign = [
            self.root / HOME / "notes.txt",
            self.root / HOME / "photos" / "2019" / "cat.txt",
            self.root / HOME / "payments" / "README.md",
        ]
        for path in foreign:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not a build context\n")
            os.utime(path, (long_ago, long_ago))
        # Ours in form, but in a namespace this deployment does not serve.
        record = _elsewhere(self.built("payments"))
        elsewhere = self.folder(record) / RECORD
        elsewhere.parent.mkdir(parents=True)
        elsewhere.write_text(json.dumps(records.to_json(record)))
        foreign.append(elsewhere)
        return lambda: all(path.exists() for path in foreign)


def open_filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    under_test = FilesystemUnderTest(tmp_path / "contexts")
    yield under_test
    under_test.client.close()


class ConfigMapUnderTest(StoreUnderTest):
    """The ConfigMap store on the session's kube-apiserver, in namespaces HOME and EXTRA, which
    are emptied first: the apiserver outlives the test, and nothing finalizes a namespace."""

    def __init__(self, kube: Any) -> None:
        import kubernetes.client

        from function.stores.configmap import ConfigMapStore

        admin_client = kube.api_client()
        self.admin = kubernetes.client.CoreV1Api(admin_client)
        for namespace in (HOME, EXTRA, "team-z"):
            try:
                self.admin.create_namespace({"metadata": {"name": namespace}})
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise
            self.admin.delete_collection_namespaced_config_map(namespace)
        settings = {
            "storage": "configmap",
            "namespace": HOME,
            "allowed_namespaces": EXTRA,
            "threads": 16,
            "configmap_namespace_max_count": 100_000,
            "configmap_namespace_max_bytes": 1024**3,
        }
        configuration = admin_client.configuration

        def client() -> Store[Any]:
            return ConfigMapStore.from_settings(
                load_settings(**settings), configuration=configuration
            )

        super().__init__(client(), client, settings)
        self.client.check()

    def name(self, record: ContextRecord) -> str:
        from function.stores.configmap import configmap_name

        return configmap_name(record.function, record.content_hash)

    def pin(self, record: ContextRecord) -> None:
        """As documented: kubectl label configmap NAME build-context.dev/retain=true."""
        from function.stores.base import RETAIN

        labels = {"metadata": {"labels": {RETAIN: "true"}}}
        self.admin.patch_namespaced_config_map(self.name(record), record.namespace, labels)

    def plant_foreign(self) -> Callable[[], bool]:
        from function.stores.configmap import configmap_body

        built = self.built("payments")
        planted = [
            (HOME, {"metadata": {"name": "app-settings"}, "data": {"mode": "prod"}}),
            (HOME, {"metadata": {"name": "payments-build-context-notes"}}),
        ]
        # Ours in form, but in a namespace this deployment does not serve.
        planted.append(("team-z", configmap_body(built, _elsewhere(built), None)))
        for namespace, body in planted:
            self.admin.create_namespaced_config_map(namespace, body)

        def still_there() -> bool:
            present = {
                (ns, cm.metadata.name)
                for ns in (HOME, "team-z")
                for cm in self.admin.list_namespaced_config_map(ns).items
            }
            return all((ns, body["metadata"]["name"]) in present for ns, body in planted)

        return still_there


def open_configmap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    under_test = ConfigMapUnderTest(request.getfixturevalue("kube"))
    yield under_test
    under_test.client.close()


class S3UnderTest(StoreUnderTest):
    """The S3 store on the session's SeaweedFS, in a fresh bucket of its own."""

    def __init__(self, seaweed: Any, bucket: str) -> None:
        import boto3

        from function.stores.s3 import S3Store

        settings = {
            "storage": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": seaweed.endpoint_url,
            "s3_force_path_style": True,
            "s3_region": seaweed.region,
            "namespace": HOME,
            "allowed_namespaces": EXTRA,
            "retry_base_delay_seconds": FAST_RETRIES["retry_base_delay_seconds"],
        }

        def open_client() -> Store[Any]:
            session = boto3.session.Session(
                aws_access_key_id=seaweed.admin.access_key,
                aws_secret_access_key=seaweed.admin.secret_key,
            )
            return S3Store.from_settings(load_settings(**settings), session=session)

        super().__init__(open_client(), open_client, settings)
        self.admin = seaweed.client()
        self.bucket = bucket
        self.client.check()

    def key(self, record: ContextRecord) -> str:
        return f"build-contexts/{record.namespace}/{record.function}/{record.content_hash}.tar.gz"

    def pin(self, record: ContextRecord) -> None:
        """As documented: tag the object build-context.dev/retain=true."""
        from function.stores.base import RETAIN

        self.admin.put_object_tagging(
            Bucket=self.bucket,
            Key=self.key(record),
            Tagging={"TagSet": [{"Key": RETAIN, "Value": "true"}]},
        )

    def plant_foreign(self) -> Callable[[], bool]:
        from function.stores.s3 import object_metadata

        built = self.built("payments")
        expired = _elsewhere(built)
        lookalike = replace(expired, namespace=HOME)
        planted = {
            "photos/2019/cat.jpg": {},
            f"build-contexts/{HOME}/notes.txt": {},
            f"build-contexts/{HOME}/payments/README.md": {},
            # Our layout and metadata, but another tool's marker.
            self.key(lookalike): {**object_metadata(lookalike), "managed-by": "another-tool"},
            # Ours in form, but in a namespace this deployment does not serve.
            self.key(expired): object_metadata(expired),
        }
        for key, metadata in planted.items():
            self.admin.put_object(Bucket=self.bucket, Key=key, Body=built.data, Metadata=metadata)

        def still_there() -> bool:
            listed = self.admin.list_objects_v2(Bucket=self.bucket).get("Contents", [])
            return set(planted) <= {item["Key"] for item in listed}

        return still_there


def open_s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    seaweed = request.getfixturevalue("seaweed")
    bucket = f"cleanup-{os.urandom(6).hex()}"
    seaweed.client().create_bucket(Bucket=bucket)
    under_test = S3UnderTest(seaweed, bucket)
    yield under_test
    under_test.client.close()


class OCIUnderTest(StoreUnderTest):
    """The OCI store on the session's registry, under a repository prefix of its own."""

    def __init__(self, registry: Any, workdir: Path) -> None:
        from function.stores.oci import OCIStore

        self.registry = registry
        self.workdir = workdir
        self.prefix = f"contexts-{os.urandom(4).hex()}"
        config = registry.docker_config(workdir / "docker" / "config.json")
        settings = {
            "storage": "oci",
            "oci_registry": registry.host,
            "oci_repository": self.prefix,
            "oci_docker_config": str(config),
            "oci_ca_file": str(registry.ca_path or ""),
            "oci_insecure_http": not registry.tls,
            "namespace": HOME,
            "allowed_namespaces": EXTRA,
            "threads": 16,
            "retry_base_delay_seconds": 0.01,
        }

        def client() -> Store[Any]:
            return OCIStore.from_settings(load_settings(**settings))

        super().__init__(client(), client, settings)

    def reference(self, record: ContextRecord) -> str:
        repository = f"{self.prefix}/{record.namespace}/{record.function}"
        return f"{self.registry.host}/{repository}:{archive.image_tag(record.content_hash)}"

    def pin(self, record: ContextRecord) -> None:
        """As documented: crane tag REGISTRY/REPOSITORY:TAG TAG.retain"""
        reference = self.reference(record)
        self.registry.crane("tag", reference, reference.rsplit(":", 1)[1] + ".retain")

    def plant_foreign(self) -> Callable[[], bool]:
        from function.stores.oci import EMPTY_DIGEST, ContextImage, OCIStore, record_manifest
        from function.stores.oci.client import OCI_MANIFEST

        built = self.built("payments")
        layer = self.workdir / "layer.tar.gz"
        layer.write_bytes(built.data)
        host = self.registry.host
        planted = [
            f"{host}/{self.prefix}-photos/cat:2019",  # not under our prefix
            f"{host}/{self.prefix}/{HOME}/payments:latest",  # another tool's tag in our repo
            f"{host}/{self.prefix}/{HOME}/notes:v1",
        ]
        for reference in planted:
            self.registry.crane("append", "-f", str(layer), "-t", reference)
        # Ours in form, but in a namespace this deployment does not serve.
        expired = _elsewhere(built)
        elsewhere = self.second_client()
        elsewhere.put_if_absent(built, expired)
        planted.append(self.reference(expired))
        # Our layout, but a record another tool wrote (its own marker) on an image of its own.
        other = self.built("payments")
        lookalike = replace(
            expired, namespace=HOME, content_hash=other.content_hash,
            archive_sha256=other.archive_sha256, size_bytes=other.size_bytes,
        )  # fmt: skip
        layer.write_bytes(other.data)
        image = self.reference(lookalike)
        self.registry.crane("append", "-f", str(layer), "-t", image)
        body = record_manifest(lookalike, ContextImage.of(other, lookalike))
        body = body.replace(b'"build-context"', b'"another-tool"')
        repository = image.split("/", 1)[1].rsplit(":", 1)[0]
        writer = cast(OCIStore, elsewhere).client
        writer.upload_blob(repository, EMPTY_DIGEST, b"{}")
        writer.put_manifest(repository, image.rsplit(":", 1)[1] + ".record", body, OCI_MANIFEST)
        planted += [image, image + ".record"]
        digests = {ref: self.registry.crane("digest", ref).stdout for ref in planted}

        def still_there() -> bool:
            for ref, digest in digests.items():
                now = self.registry.crane("digest", ref, check=False)
                if now.returncode != 0 or now.stdout != digest:
                    return False
            return True

        return still_there


def open_oci(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    under_test = OCIUnderTest(request.getfixturevalue("registry"), tmp_path)
    yield under_test
    under_test.client.close()


OPENERS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[StoreUnderTest]]] = {
    "filesystem": open_filesystem,
    "configmap": open_configmap,
    "s3": open_s3,
    "oci": open_oci,
}
_SERVERS = {"configmap": pytest.mark.kube, "s3": pytest.mark.s3, "oci": pytest.mark.oci}
EVERY_BACKEND = [pytest.param(name, marks=_SERVERS.get(name, ())) for name in OPENERS]
"""The `params` of a `store` fixture over every backend, marked by the server it needs."""
