"""The S3 store against a real S3 server (SeaweedFS), in process and over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import logging
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import kubernetes.client
import pytest
import yaml

from function import archive
from function.archive import Archive
from function.cleanup import CleanupService
from function.errors import (
    ConfigurationError,
    StorageConflict,
    StorageForbidden,
    StorageUnavailable,
)
from function.settings import load_settings
from function.stores import open_store
from function.stores.base import RETAIN, ContextRecord, Deletion, Listed
from function.stores.s3 import ClaimTimes, S3Store
from function.stores.s3.provenance import AttestedS3Store, envelope_key
from function.stores.traced import TracedStore
from function.telemetry import Telemetry
from tests.conftest import StartServer
from tests.support.contexts import ROOT, assert_is_the_announced_archive, example
from tests.support.kube import KubeAPIServer
from tests.support.records import FAST_RETRIES, FAST_RETRIES_ENV, NOW, incompressible, record
from tests.support.seaweed import SeaweedS3
from tests.support.server import free_port
from tests.support.telemetry import TelemetryRecorder

pytestmark = pytest.mark.s3

MIB = 1024 * 1024
NO_CAPS = {
    "BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION": "0",
    "BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION": "0",
}
"""The per-function caps list the function's prefix before a new context; tests of the first
upload call turn them off."""


def small(text: str = "print(1)\n") -> Archive:
    return archive.build({"remediation.py": text, "Dockerfile": "FROM python:3.13-slim\n"})


@pytest.fixture
def admin(seaweed: SeaweedS3) -> Any:
    return seaweed.client()


def open_s3(
    seaweed: SeaweedS3,
    bucket: str,
    endpoint: str | None = None,
    identity: str = "admin",
    telemetry: Telemetry | None = None,
    parts: dict[str, Any] | None = None,
    kind: type[S3Store] = S3Store,
    **settings: Any,
) -> S3Store:
    credentials = seaweed.admin if identity == "admin" else seaweed.restricted
    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key
    )
    loaded = load_settings(
        storage="s3",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint or seaweed.endpoint_url,
        s3_force_path_style=True,
        s3_region=seaweed.region,
        **{**FAST_RETRIES, **settings},
    )
    store = kind.from_settings(
        loaded, telemetry or TelemetryRecorder().telemetry, session, **(parts or {})
    )
    store.check()
    return store


@pytest.fixture
def store(seaweed: SeaweedS3, bucket: str) -> Iterator[S3Store]:
    opened = open_s3(seaweed, bucket)
    yield opened
    opened.close()


def keys(admin: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in admin.list_objects_v2(Bucket=bucket).get("Contents", [])]


def calls(store: S3Store, *operations: str) -> list[str]:
    """Names of the given S3 operations the store's own client sends from now on."""
    seen: list[str] = []
    for operation in operations:
        store.client.meta.events.register(
            f"before-call.s3.{operation}",
            lambda model, **_: seen.append(model.name),
        )
    return seen


# --- create and reuse ---------------------------------------------------------------------


def test_create_stores_the_archive_with_its_record_as_metadata(
    store: S3Store, admin: Any, bucket: str
) -> None:
    built = small()
    wanted = record(built, metadata={"ticket": "OPS-7"}, request_id="req-ü 1")

    stored = store.put_if_absent(built, wanted)

    key = f"build-contexts/team-a/fix-it/{built.content_hash}.tar.gz"
    assert stored.reused is False
    assert stored.storage == {
        "backend": "s3",
        "bucket": bucket,
        "key": key,
        "region": "us-east-1",
        "endpoint": store.endpoint,
    }
    assert stored.context_uri == f"s3://{bucket}/{key}"
    got = admin.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == built.data
    assert got["ContentType"] == "application/gzip"
    assert got["Metadata"] == {
        "managed-by": "build-context",
        "namespace": "team-a",
        "function": "fix-it",
        "runtime": "python",
        "runtime-version": "3.13",
        "content-hash": built.content_hash,
        "archive-sha256": built.archive_sha256,
        "size-bytes": str(built.size_bytes),
        "created-at": "2026-01-01T00:00:00Z",
        "expires-at": "2026-01-01T01:00:00Z",
        "request-id": "req-%C3%BC%201",
        "metadata": '{"ticket":"OPS-7"}',
    }
    assert store.get("team-a", "fix-it", built.content_hash) == built.data
    assert [item.record for item in store.list()] == [wanted]
    with pytest.raises(KeyError):
        store.get("team-a", "fix-it", "0" * 64)


def test_request_metadata_beyond_the_s3_limit_is_left_out(store: S3Store, admin: Any) -> None:
    built = small()
    large = {f"key-{i:02d}": "v" * 200 for i in range(32)}

    store.put_if_absent(built, record(built, metadata=large))

    [listed] = store.list()
    assert listed.record == record(built)
    assert listed.record.metadata == {}


def test_identical_content_is_reused_never_uploaded_again_and_expiry_only_moves_forward(
    store: S3Store, admin: Any, bucket: str
) -> None:
    built = small()
    first = store.put_if_absent(built, record(built))
    uploads = calls(store, "PutObject", "CreateMultipartUpload")

    later = store.put_if_absent(built, record(built, NOW + timedelta(hours=3), request_id="r2"))
    earlier = store.put_if_absent(built, record(built, NOW - timedelta(days=1)))

    assert (first.reused, later.reused, earlier.reused) == (False, True, True)
    assert uploads == []
    assert later.record.created_at == NOW
    assert later.record.request_id == "req-1"
    assert later.record.expires_at == NOW + timedelta(hours=4)
    assert earlier.record.expires_at == later.record.expires_at
    head = admin.head_object(Bucket=bucket, Key=first.storage["key"])
    assert head["Metadata"]["expires-at"] == "2026-01-01T04:00:00Z"
    assert head["Metadata"]["created-at"] == "2026-01-01T00:00:00Z"
    assert head["ContentType"] == "application/gzip"
    assert admin.get_object(Bucket=bucket, Key=first.storage["key"])["Body"].read() == built.data
    assert keys(admin, bucket) == [first.storage["key"]]


def test_a_new_signed_context_reads_its_key_once_and_a_reuse_writes_nothing(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    store = open_s3(seaweed, bucket, kind=AttestedS3Store)
    built = dataclasses.replace(small(), provenance=b'{"payloadType": "test"}')
    sent = calls(store, "HeadObject", "PutObject", "CopyObject", "GetObject")

    first = store.put_if_absent(built, record(built))

    key = first.storage["key"]
    # One read of the key decides both writes: the envelope, then the archive (conditional).
    assert sent == ["HeadObject", "PutObject", "PutObject"]
    assert sorted(keys(admin, bucket)) == sorted([key, envelope_key(key)])
    assert store.get_provenance("team-a", "fix-it", built.content_hash) == built.provenance
    sent.clear()

    again = store.put_if_absent(built, record(built, request_id="r2"))

    assert again.reused and again.record == first.record
    assert "PutObject" not in sent and "CopyObject" not in sent, sent
    store.close()


def test_concurrent_identical_requests_leave_one_object(
    seaweed: SeaweedS3, store: S3Store, admin: Any, bucket: str
) -> None:
    """16 requests at once, from two pods' clients: one upload wins, the others reuse it."""
    built = small()
    other_pod = open_s3(seaweed, bucket)
    stores = [store, other_pod] * 8
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda s: s.put_if_absent(built, record(built)), stores))

    assert [r.reused for r in results].count(False) == 1
    assert len(keys(admin, bucket)) == 1
    assert all(r.record == record(built) for r in results)


def test_concurrent_identical_large_archives_leave_one_object_and_no_upload(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    """SeaweedFS 4.48 checks `If-None-Match` on a multipart completion without a lock:
    concurrent completions can both succeed (measured: 6 of 20 rounds of three), where AWS S3
    answers all but one with 412 or 409 (docs/s3.md). So the test holds what must stay true on
    either server: one object with the right bytes, no upload left open, at least one created;
    and a later identical upload, which meets the completed object, is a reuse."""
    built = incompressible(6 * MIB)
    stores = [open_s3(seaweed, bucket, s3_multipart_threshold_bytes=5 * MIB) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: s.put_if_absent(built, record(built)), stores))

    assert [r.reused for r in results].count(False) >= 1
    assert keys(admin, bucket) == [results[0].storage["key"]]
    assert not admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert admin.get_object(Bucket=bucket, Key=results[0].storage["key"])["Body"].read() == (
        built.data
    )
    later = stores[0].put_if_absent(built, record(built))
    assert later.reused
    assert keys(admin, bucket) == [results[0].storage["key"]]


def test_large_archives_go_up_in_parts_with_bounded_memory(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    store = open_s3(seaweed, bucket, s3_multipart_threshold_bytes=5 * MIB)
    built = incompressible(12 * MIB + 5)
    store.put_if_absent(small(), record(small(), function="warm-up"))

    tracemalloc.start()
    try:
        stored = store.put_if_absent(built, record(built))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    head = admin.head_object(Bucket=bucket, Key=stored.storage["key"])
    assert head["ETag"].endswith('-3"'), "three parts of 5 MiB, 5 MiB and 2 MiB"
    assert head["ContentLength"] == built.size_bytes
    assert store.get("team-a", "fix-it", built.content_hash) == built.data
    assert peak < 5 * MIB, f"peak {peak / MIB:.1f} MiB: an archive or a part was copied"


def test_a_single_put_does_not_copy_the_archive(seaweed: SeaweedS3, bucket: str) -> None:
    store = open_s3(seaweed, bucket)
    built = incompressible(6 * MIB)
    store.put_if_absent(small(), record(small(), function="warm-up"))

    tracemalloc.start()
    try:
        store.put_if_absent(built, record(built))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 3 * MIB, f"peak {peak / MIB:.1f} MiB for a 6 MiB archive"


# --- failures -----------------------------------------------------------------------------


class FaultyS3Proxy:
    """A loopback HTTP proxy in front of the real S3 server that fails chosen requests.

    `fault(method, query)` returns None to forward the request, "slow-down" to answer 503
    SlowDown as S3 does when throttling, or "cut" to drop the connection halfway through
    the request body. `rewrite(body)` may change the body of each forwarded answer.
    """

    def __init__(
        self,
        upstream: str,
        fault: Callable[[str, dict[str, list[str]]], str | None],
        rewrite: Callable[[bytes], bytes] = lambda body: body,
    ):
        target = urlsplit(upstream)
        self.faults: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                action = fault(self.command, parse_qs(urlsplit(self.path).query, True))
                if action == "cut":
                    proxy.faults.append(action)
                    self.rfile.read(length // 2)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                body = self.rfile.read(length)
                if action == "slow-down":
                    proxy.faults.append(action)
                    error = (
                        b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(str(target.hostname), target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = rewrite(response.read())
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_throttling_is_retried_with_backoff_until_it_succeeds(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    throttled = iter([True, True])

    def fault(method: str, query: dict[str, list[str]]) -> str | None:
        return "slow-down" if method == "PUT" and next(throttled, False) else None

    recorder = TelemetryRecorder()
    built = small()
    with FaultyS3Proxy(seaweed.endpoint_url, fault) as proxy:
        store = open_s3(seaweed, bucket, proxy.url, telemetry=recorder.telemetry)
        stored = store.put_if_absent(built, record(built))

    assert stored.reused is False
    assert proxy.faults == ["slow-down", "slow-down"]
    assert recorder.retries() == 2
    assert "s3.put_object" in recorder.span_names()
    assert admin.get_object(Bucket=bucket, Key=stored.storage["key"])["Body"].read() == built.data


def test_a_multipart_upload_failing_midway_is_aborted_and_leaves_nothing(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    def fault(method: str, query: dict[str, list[str]]) -> str | None:
        return "slow-down" if query.get("partNumber") == ["2"] else None

    recorder = TelemetryRecorder()
    built = incompressible(11 * MIB)
    with FaultyS3Proxy(seaweed.endpoint_url, fault) as proxy:
        store = open_s3(
            seaweed,
            bucket,
            proxy.url,
            telemetry=recorder.telemetry,
            s3_multipart_threshold_bytes=5 * MIB,
        )
        with pytest.raises(StorageUnavailable) as failure:
            store.put_if_absent(built, record(built))

    assert failure.value.retryable is True
    assert "upload_part" in failure.value.message and "3 attempt(s)" in failure.value.message
    assert recorder.retries() == 2
    assert "s3.abort_multipart_upload" in recorder.span_names()
    assert keys(admin, bucket) == []
    assert not admin.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_a_put_cut_off_midway_leaves_no_object(seaweed: SeaweedS3, admin: Any, bucket: str) -> None:
    def fault(method: str, query: dict[str, list[str]]) -> str | None:
        return "cut" if method == "PUT" else None

    built = incompressible(2 * MIB)
    with FaultyS3Proxy(seaweed.endpoint_url, fault) as proxy:
        store = open_s3(seaweed, bucket, proxy.url)
        with pytest.raises(StorageUnavailable) as failure:
            store.put_if_absent(built, record(built))

    assert failure.value.retryable is True
    assert proxy.faults == ["cut"] * 3
    assert keys(admin, bucket) == []


def test_access_denied_is_storage_forbidden_without_retries(seaweed: SeaweedS3, admin: Any) -> None:
    """The restricted identity may only read: start-up warns, the upload is refused."""
    if seaweed.restricted_bucket not in {b["Name"] for b in admin.list_buckets()["Buckets"]}:
        admin.create_bucket(Bucket=seaweed.restricted_bucket)
    recorder = TelemetryRecorder()
    store = open_s3(
        seaweed, seaweed.restricted_bucket, identity="restricted", telemetry=recorder.telemetry
    )
    built = small()

    with pytest.raises(StorageForbidden) as failure:
        store.put_if_absent(built, record(built))

    assert failure.value.retryable is False
    assert "s3:PutObject" in failure.value.message
    assert f"arn:aws:s3:::{seaweed.restricted_bucket}/build-contexts/*" in failure.value.message
    assert recorder.retries() == 0


def test_an_unreachable_endpoint_is_retried_then_storage_unavailable(
    seaweed: SeaweedS3,
) -> None:
    recorder = TelemetryRecorder()
    store = open_s3(
        seaweed, "nowhere", f"http://127.0.0.1:{free_port()}", telemetry=recorder.telemetry
    )
    built = small()

    with pytest.raises(StorageUnavailable) as failure:
        store.put_if_absent(built, record(built))

    assert failure.value.retryable is True
    assert "after 3 attempt(s)" in failure.value.message
    assert recorder.retries() == 2
    assert recorder.span_names().count("s3.head_object") == 1


def test_a_missing_bucket_stops_start_up(seaweed: SeaweedS3) -> None:
    settings = load_settings(
        storage="s3",
        s3_bucket="no-such-bucket",
        s3_endpoint_url=seaweed.endpoint_url,
        s3_force_path_style=True,
        s3_region=seaweed.region,
    )
    session = boto3.session.Session(
        aws_access_key_id=seaweed.admin.access_key,
        aws_secret_access_key=seaweed.admin.secret_key,
    )
    with pytest.raises(ConfigurationError) as failure:
        S3Store.from_settings(settings, session=session).check()
    assert failure.value.variable == "BUILD_CONTEXT_S3_BUCKET"
    assert "'no-such-bucket' does not exist" in str(failure.value)
    with pytest.raises(ConfigurationError) as bad_url:
        open_store("s3", load_settings(storage="s3", s3_bucket="b", s3_endpoint_url="minio:9000"))
    assert bad_url.value.variable == "BUILD_CONTEXT_S3_ENDPOINT_URL"


# --- a bucket shared with others, and cleanup's view ---------------------------------------


def test_a_shared_bucket_lists_and_deletes_only_our_objects(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    store = open_s3(seaweed, bucket, cleanup_page_size=2)
    ours = [small(f"print({i})\n") for i in range(3)]
    stored = [
        store.put_if_absent(built, record(built, namespace=namespace))
        for built, namespace in zip(ours, ["team-a", "team-b", "team-a"], strict=True)
    ]
    imposter = f"build-contexts/team-a/fix-it/{'f' * 64}.tar.gz"
    lookalike = admin.head_object(Bucket=bucket, Key=stored[0].storage["key"])["Metadata"]
    foreign = {
        "photos/cat.jpg": {},
        "build-contexts/README.md": {},
        "build-contexts/team-a/fix-it/notes.txt": {},
        imposter: {**lookalike, "content-hash": "f" * 64, "managed-by": "another-tool"},
    }
    for key, metadata in foreign.items():
        admin.put_object(Bucket=bucket, Key=key, Body=b"not ours", Metadata=metadata)

    listed = list(store.list())
    in_team_b = list(store.list(frozenset({"team-b"})))
    deleted = [store.delete(item, lambda r: True) for item in listed]

    assert sorted(item.record.content_hash for item in listed) == sorted(
        b.content_hash for b in ours
    )
    assert [item.record.namespace for item in in_team_b] == ["team-b"]
    assert deleted == [Deletion.DELETED] * 3
    assert sorted(keys(admin, bucket)) == sorted(foreign)
    occupied = replace(record(ours[0]), content_hash="f" * 64)
    with pytest.raises(StorageConflict, match="not written by build-context"):
        store.put_if_absent(ours[0], occupied)
    assert admin.get_object(Bucket=bucket, Key=imposter)["Body"].read() == b"not ours"


def test_delete_rechecks_the_freshest_record_and_honours_the_retain_tag(
    store: S3Store, admin: Any, bucket: str
) -> None:
    refreshed, pinned = small("print('refreshed')\n"), small("print('pinned')\n")
    store.put_if_absent(refreshed, record(refreshed))
    key = store.put_if_absent(pinned, record(pinned)).storage["key"]
    listed = {item.record.content_hash: item for item in store.list()}
    later = NOW + timedelta(hours=2)

    store.put_if_absent(refreshed, record(refreshed, NOW + timedelta(hours=5)))
    admin.put_object_tagging(
        Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": RETAIN, "Value": "true"}]}
    )

    def expired(r: ContextRecord) -> bool:
        return not r.retain and r.expired(later)

    assert store.delete(listed[refreshed.content_hash], expired) is Deletion.KEPT
    assert store.delete(listed[pinned.content_hash], expired) is Deletion.KEPT
    assert len(keys(admin, bucket)) == 2
    assert {item.record.content_hash: item.record.retain for item in store.list()} == {
        refreshed.content_hash: False,
        pinned.content_hash: True,
    }
    store.put_if_absent(pinned, record(pinned, NOW + timedelta(hours=9)))
    assert admin.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [
        {"Key": RETAIN, "Value": "true"}
    ], "a refresh keeps the pin"


def test_delete_of_an_object_gone_meanwhile_says_gone(store: S3Store, admin: Any) -> None:
    built = small()
    stored = store.put_if_absent(built, record(built))
    [item] = store.list()
    admin.delete_object(Bucket=stored.storage["bucket"], Key=stored.storage["key"])
    assert store.delete(item, lambda r: True) is Deletion.GONE


def test_refresh_recreates_an_object_deleted_by_cleanup_meanwhile(
    store: S3Store, admin: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cleanup deletes the object just before the refresh copies it (the race, made certain)."""
    built = small()
    key = store.put_if_absent(built, record(built)).storage["key"]
    real_copy = store.client.copy_object

    def delete_then_copy(**kwargs: Any) -> Any:
        admin.delete_object(Bucket=bucket, Key=key)
        return real_copy(**kwargs)

    monkeypatch.setattr(store.client, "copy_object", delete_then_copy)
    again = store.put_if_absent(built, record(built, NOW + timedelta(hours=3)))

    assert again.reused is False
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == built.data
    assert admin.head_object(Bucket=bucket, Key=key)["Metadata"]["expires-at"] == (
        "2026-01-01T04:00:00Z"
    )


@pytest.mark.parametrize("how", ["delete", "delete_many"])
def test_a_reuse_racing_cleanups_delete_is_never_lost(
    seaweed: SeaweedS3, store: S3Store, admin: Any, bucket: str, how: str
) -> None:
    """Cleanup has re-checked the context and is about to delete it when a request reuses it:
    the request refreshes it, sees cleanup's claim, waits, and writes the context again. The
    same holds for a page deleted with one DeleteObjects call."""
    built = small()
    key = store.put_if_absent(built, record(built)).storage["key"]
    [item] = store.list()
    request_store = open_s3(seaweed, bucket)
    outcome: list[Any] = []
    racer = threading.Thread(
        target=lambda: outcome.append(
            request_store.put_if_absent(built, record(built, NOW + timedelta(days=1)))
        )
    )
    claim_seen = threading.Event()

    def on_head(http_response: Any, **_: Any) -> None:
        if http_response.url.endswith(".deleting") and http_response.status_code == 200:
            claim_seen.set()

    def request_arrives(params: dict[str, Any], **_: Any) -> None:
        deleting = [o["Key"] for o in params["Delete"]["Objects"]] if "Delete" in params else []
        if key in [params.get("Key"), *deleting] and not racer.is_alive() and not outcome:
            racer.start()
            while racer.is_alive() and not claim_seen.wait(0.01):
                pass

    request_store.client.meta.events.register("after-call.s3.HeadObject", on_head)
    for operation in ("DeleteObject", "DeleteObjects"):
        store.client.meta.events.register(f"before-parameter-build.s3.{operation}", request_arrives)
    sent = calls(store, "DeleteObject", "DeleteObjects")

    def still_expired(r: ContextRecord) -> bool:
        return r.expired(NOW + timedelta(hours=2))

    deleted: Deletion | Exception
    if how == "delete":
        deleted = store.delete(item, still_expired)
    else:
        [deleted] = store.delete_many([item], still_expired)
    racer.join()

    assert deleted is Deletion.DELETED
    assert sent == {"delete": ["DeleteObject"] * 2, "delete_many": ["DeleteObjects"] * 2}[how]
    assert outcome[0].reused is False, "the request found its context deleted and wrote it again"
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == built.data
    assert admin.head_object(Bucket=bucket, Key=key)["Metadata"]["expires-at"] == (
        "2026-01-02T01:00:00Z"
    )
    assert keys(admin, bucket) == [key], "the claim is released"


def expired_contexts(store: S3Store, count: int) -> list[Listed[Any]]:
    """`count` contexts of functions fn-0, fn-1, ..., in that order; all expired by LATER."""
    for i in range(count):
        built = small(f"print({i})\n")
        store.put_if_absent(built, record(built, function=f"fn-{i}"))
    return sorted(store.list(), key=lambda item: int(item.record.function[3:]))


LATER = NOW + timedelta(hours=2)


def expired_later(r: ContextRecord) -> bool:
    return not r.retain and r.expired(LATER)


def test_reuses_racing_a_page_deleted_at_once_are_never_lost(
    seaweed: SeaweedS3, store: S3Store, admin: Any, bucket: str
) -> None:
    """The race above for four contexts claimed and re-checked at once: right before their
    DeleteObjects call, a request reuses each one; each sees its claim, waits, finds its
    context deleted and writes it again."""
    items = expired_contexts(store, 4)
    request_store = open_s3(seaweed, bucket)
    claims_seen = {item.handle.key: threading.Event() for item in items}
    outcome: dict[str, Any] = {}

    def reuse(index: int, key: str) -> None:
        built = small(f"print({index})\n")
        later = record(built, NOW + timedelta(days=1), function=f"fn-{index}")
        outcome[key] = request_store.put_if_absent(built, later)

    racers = [
        threading.Thread(target=reuse, args=(i, item.handle.key)) for i, item in enumerate(items)
    ]

    def on_head(http_response: Any, **_: Any) -> None:
        claim = http_response.url.rsplit("/", 1)[-1]
        for key, seen in claims_seen.items():
            if key.endswith(claim.removesuffix(".deleting")) and http_response.status_code == 200:
                seen.set()

    def requests_arrive(params: dict[str, Any], **_: Any) -> None:
        deleting = [o["Key"] for o in params["Delete"]["Objects"]]
        if set(claims_seen) <= set(deleting) and not outcome and not racers[0].is_alive():
            for racer in racers:
                racer.start()
            for racer, seen in zip(racers, claims_seen.values(), strict=True):
                while racer.is_alive() and not seen.wait(0.01):
                    pass

    request_store.client.meta.events.register("after-call.s3.HeadObject", on_head)
    store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", requests_arrive)
    outcomes = store.delete_many(items, expired_later)
    for racer in racers:
        racer.join()

    assert list(outcomes) == [Deletion.DELETED] * 4
    assert [outcome[item.handle.key].reused for item in items] == [False] * 4
    for item in items:
        metadata = admin.head_object(Bucket=bucket, Key=item.handle.key)["Metadata"]
        assert metadata["expires-at"] == "2026-01-02T01:00:00Z"
    assert sorted(keys(admin, bucket)) == sorted(claims_seen), "the claims are released"


def test_delete_many_rechecks_each_context_and_deletes_the_page_in_one_call(
    store: S3Store, admin: Any, bucket: str
) -> None:
    items = expired_contexts(store, 7)
    key = [item.handle.key for item in items]
    refreshed = small("print(3)\n")
    store.put_if_absent(refreshed, record(refreshed, NOW + timedelta(hours=5), function="fn-3"))
    admin.put_object_tagging(
        Bucket=bucket, Key=key[4], Tagging={"TagSet": [{"Key": RETAIN, "Value": "true"}]}
    )
    admin.delete_object(Bucket=bucket, Key=key[5])
    another_run = key[6] + ".deleting"
    admin.put_object(Bucket=bucket, Key=another_run, Body=b"")
    sent = calls(store, "DeleteObject", "DeleteObjects", "PutObject")
    md5_checked: list[bool] = []

    def check_md5(request: Any, **_: Any) -> None:
        """Servers such as Ceph RGW refuse a DeleteObjects call without Content-MD5."""
        digest = base64.b64encode(hashlib.md5(request.body).digest())
        md5_checked.append(request.headers.get("Content-MD5") in (digest, digest.decode()))

    store.client.meta.events.register("before-send.s3.DeleteObjects", check_md5)

    outcomes = store.delete_many(items, expired_later)

    kept, gone = [Deletion.KEPT] * 2, [Deletion.GONE] * 2
    assert list(outcomes) == [Deletion.DELETED] * 3 + kept + gone
    assert sent.count("DeleteObjects") == 2, "one call deletes the page, one releases the claims"
    assert md5_checked == [True, True]
    assert "DeleteObject" not in sent and sent.count("PutObject") == 7, "a claim per context"
    assert sorted(keys(admin, bucket)) == sorted([key[3], key[4], key[6], another_run])


def test_delete_many_keeps_a_context_overwritten_after_its_recheck(
    store: S3Store, admin: Any, bucket: str
) -> None:
    """Each key of the DeleteObjects call carries the ETag its re-check saw."""
    [item] = expired_contexts(store, 1)
    key = item.handle.key
    metadata = admin.head_object(Bucket=bucket, Key=key)["Metadata"]

    def overwrite(params: dict[str, Any], **_: Any) -> None:
        if key in [o["Key"] for o in params["Delete"]["Objects"]]:
            admin.put_object(Bucket=bucket, Key=key, Body=b"rewritten", Metadata=metadata)

    store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", overwrite)
    assert list(store.delete_many([item], expired_later)) == [Deletion.KEPT]
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"rewritten"
    assert keys(admin, bucket) == [key], "the claim is released"


def test_a_key_s3_did_not_delete_is_counted_and_logged_and_the_rest_go(
    seaweed: SeaweedS3, store: S3Store, admin: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy turns one key of the DeleteObjects answer into AccessDenied, as S3 answers for
    a key that a bucket policy protects."""
    items = expired_contexts(store, 4)
    denied = items[1].handle.key.encode()

    def deny(body: bytes) -> bytes:
        return body.replace(
            b"<Deleted><Key>" + denied + b"</Key></Deleted>",
            b"<Error><Key>" + denied + b"</Key><Code>AccessDenied</Code>"
            b"<Message>Access Denied</Message></Error>",
        )

    settings = load_settings(namespace="team-a", keep_latest=0, cleanup_grace_seconds=0)
    with FaultyS3Proxy(seaweed.endpoint_url, lambda *_: None, deny) as proxy:
        service = CleanupService([open_s3(seaweed, bucket, proxy.url)], settings, lambda: LATER)
        with caplog.at_level(logging.WARNING, logger="build_context.cleanup"):
            [summary] = service.run().stores

    assert (summary.deleted, summary.errors) == (3, 1)
    [failure] = [r for r in caplog.records if r.getMessage().startswith("cleanup: could not")]
    assert getattr(failure, "function", None) == "fn-1"
    assert failure.exc_info and isinstance(failure.exc_info[1], StorageForbidden)
    assert "grant the function's identity s3:DeleteObject" in str(failure.exc_info[1])
    assert keys(admin, bucket) == [], "the proxy only hid the delete; no claim is left"


def test_delete_many_splits_a_page_beyond_the_delete_objects_limit(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    store = open_s3(seaweed, bucket, parts={"delete_batch_limit": 2})
    items = expired_contexts(store, 5)
    sent = calls(store, "DeleteObjects")
    assert list(store.delete_many(items, expired_later)) == [Deletion.DELETED] * 5
    assert len(sent) == 6, "three calls delete 2 + 2 + 1 contexts, three release the claims"
    assert keys(admin, bucket) == []


def test_delete_many_sends_no_delete_once_the_claims_are_older_than_the_hold(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    """A delete sent later could land after a request took the claim for stale."""
    store = open_s3(seaweed, bucket, parts={"claim_times": ClaimTimes(hold=0.0)})
    items = expired_contexts(store, 3)
    deleting: list[str] = []

    def record_keys(params: dict[str, Any], **_: Any) -> None:
        deleting.extend(o["Key"] for o in params["Delete"]["Objects"])

    store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", record_keys)
    assert list(store.delete_many(items, expired_later)) == [Deletion.KEPT] * 3
    assert len(deleting) == 3 and all(key.endswith(".deleting") for key in deleting)
    assert sorted(keys(admin, bucket)) == sorted(item.handle.key for item in items)


def test_cleanup_keeps_at_most_the_configured_requests_in_flight(
    seaweed: SeaweedS3, admin: Any, bucket: str
) -> None:
    """BUILD_CONTEXT_CLEANUP_CONCURRENCY bounds the objects read while listing and the claims
    taken while deleting. A spy on the client holds each HEAD and claim PUT a moment, so that
    a store sending more at once would show it."""
    store = open_s3(seaweed, bucket, cleanup_concurrency=3)
    items = expired_contexts(store, 12)
    in_flight, most = 0, 0
    lock = threading.Lock()

    def sent(params: dict[str, Any], **_: Any) -> None:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.05)

    def answered(**_: Any) -> None:
        nonlocal in_flight
        with lock:
            in_flight -= 1

    for operation in ("HeadObject", "PutObject"):
        store.client.meta.events.register(f"before-call.s3.{operation}", sent)
        store.client.meta.events.register(f"after-call.s3.{operation}", answered)
    listed = list(store.list())
    assert len(listed) == len(items) and most <= 3
    assert list(store.delete_many(listed, expired_later)) == [Deletion.DELETED] * 12
    assert 1 <= most <= 3, f"{most} requests in flight"
    assert keys(admin, bucket) == []


def test_cleanup_through_the_traced_store_deletes_a_page_in_one_span(
    seaweed: SeaweedS3, bucket: str, admin: Any
) -> None:
    recorder = TelemetryRecorder()
    store = open_s3(seaweed, bucket, telemetry=recorder.telemetry)
    expired_contexts(store, 4)
    settings = load_settings(namespace="team-a", keep_latest=0, cleanup_grace_seconds=0)
    traced = TracedStore(store, recorder.telemetry)
    [summary] = CleanupService([traced], settings, lambda: LATER).run().stores

    assert summary.deleted == 4
    spans = recorder.spans.get_finished_spans()
    [batch] = [span for span in spans if span.name == "build_context.storage.delete_many"]
    assert dict(batch.attributes or {}) == {
        "build_context.store": "s3",
        "build_context.operation": "delete_many",
        "build_context.items": 4,
        "build_context.deleted": 4,
    }
    inside = {span.name for span in spans if span.parent == batch.context}
    assert inside == {"s3.put_object", "s3.head_object", "s3.get_object_tagging"} | {
        "s3.delete_objects"
    }
    assert "s3.delete_object" not in {span.name for span in spans}
    assert keys(admin, store.bucket) == []


# --- over HTTP ------------------------------------------------------------------------------


def s3_env(
    seaweed: SeaweedS3, bucket: str, identity: str = "admin", **extra: str
) -> dict[str, str]:
    credentials = seaweed.admin if identity == "admin" else seaweed.restricted
    return {
        "BUILD_CONTEXT_STORAGE": "s3",
        **seaweed.function_env(bucket, credentials),
        **FAST_RETRIES_ENV,
        **extra,
    }


def test_http_created_event_points_kaniko_at_the_object(
    seaweed: SeaweedS3, admin: Any, bucket: str, start_server: StartServer
) -> None:
    server = start_server(**s3_env(seaweed, bucket))
    request = example("python")

    data, again = server.send_twice(request)
    key = f"build-contexts/default/{request['lambdaFunction']}/{data['contentHash']}.tar.gz"
    assert data["storage"] == {
        "backend": "s3",
        "bucket": bucket,
        "key": key,
        "region": seaweed.region,
        "endpoint": seaweed.endpoint_url,
    }
    assert data["contextUri"] == f"s3://{bucket}/{key}"
    assert data["overflow"] is False
    stored = admin.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert_is_the_announced_archive(stored, data)
    assert (again["reused"], again["contextUri"]) == (True, data["contextUri"])


def test_http_access_denied_is_a_failed_event_that_is_not_retryable(
    seaweed: SeaweedS3, admin: Any, start_server: StartServer
) -> None:
    if seaweed.restricted_bucket not in {b["Name"] for b in admin.list_buckets()["Buckets"]}:
        admin.create_bucket(Bucket=seaweed.restricted_bucket)
    # caps off: the first call is then the upload, whose refusal this test reads
    server = start_server(
        **s3_env(seaweed, seaweed.restricted_bucket, identity="restricted", **NO_CAPS)
    )

    reply = server.send(example("python"))

    assert reply.type == "buildcontext.failed", reply
    assert (reply.data["reason"], reply.data["retryable"]) == ("StorageForbidden", False)
    assert "s3:PutObject" in reply.data["message"]


def test_http_unreachable_endpoint_is_retried_then_retryable(
    seaweed: SeaweedS3, start_server: StartServer
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        **s3_env(seaweed, "anywhere", BUILD_CONTEXT_S3_ENDPOINT_URL=closed, **NO_CAPS)
    )

    reply = server.send(example("python"))

    assert reply.type == "buildcontext.failed", reply
    assert (reply.data["reason"], reply.data["retryable"]) == ("StorageUnavailable", True)
    retried = [line for line in server.log_lines() if line["message"] == "storage call retried"]
    assert [(line["operation"], line["attempt"]) for line in retried] == [
        ("head_object", 1),
        ("head_object", 2),
    ]


def test_http_a_missing_bucket_stops_start_up(
    seaweed: SeaweedS3, start_server: StartServer
) -> None:
    with pytest.raises(RuntimeError, match=r"BUILD_CONTEXT_S3_BUCKET.*does not exist"):
        start_server(**s3_env(seaweed, "no-such-bucket"))


@pytest.mark.kube
def test_the_documented_kaniko_job_reads_the_context_from_s3(
    kube: KubeAPIServer, store: S3Store
) -> None:
    docs = (ROOT / "docs" / "s3.md").read_text()
    manifest = docs.split("## kaniko", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    built = small()
    stored = store.put_if_absent(built, record(built))
    namespace = f"s3-{uuid.uuid4().hex[:10]}"
    filled = (
        manifest.replace("NAMESPACE", namespace)
        .replace("CONTEXT_URI", str(stored.context_uri))
        .replace("REGISTRY", "registry.example.com/remediation")
        .replace("FUNCTION", "fix-it")
        .replace("IMAGE_TAG", built.image_tag)
        .replace("http://minio.storage.svc:9000", store.endpoint)
    )

    with kube.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespace({"metadata": {"name": namespace}})
        created = kubernetes.client.BatchV1Api(client).create_namespaced_job(
            namespace, yaml.safe_load(filled), dry_run="All"
        )

    (kaniko,) = created.spec.template.spec.containers
    assert f"--context=s3://{store.bucket}/{stored.storage['key']}" in kaniko.args
    assert {e.name: e.value for e in kaniko.env} == {
        "AWS_REGION": store.region,
        "S3_ENDPOINT": store.endpoint,
        "S3_FORCE_PATH_STYLE": "true",
    }
