"""The parts of the stores that need no server: how each SDK's failures are typed and worded,
the shared call wrapper, the metadata codecs, and the base class's defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from kubernetes.client.rest import ApiException
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from function import archive
from function.archive import Archive
from function.contract import OwnerReference
from function.errors import InternalError
from function.retry import RetryPolicy
from function.stores.base import ContextRecord, Deletion, Listed, StillExpired, Store, Stored
from function.stores.calls import StorageCalls
from function.stores.configmap import errors as kube_errors
from function.stores.configmap.codec import configmap_body, record_from_metadata
from function.stores.failures import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Rejected,
    StoreError,
    TooLarge,
    Unavailable,
    Unsupported,
)
from function.stores.s3 import errors as s3_errors
from function.stores.s3.codec import METADATA_BUDGET, Layout, object_metadata
from function.telemetry import Telemetry
from tests.support.telemetry import data_points

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HASH = "ab" * 32


def record(**changes: Any) -> ContextRecord:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "function": "fix-it",
        "runtime": "python",
        "runtime_version": "3.13",
        "content_hash": HASH,
        "archive_sha256": "cd" * 32,
        "size_bytes": 123,
        "created_at": T0,
        "expires_at": T0 + timedelta(days=1),
        "request_id": "req-1",
        **changes,
    }
    return ContextRecord(**fields)


# --- S3: botocore's failures -----------------------------------------------------------------

S3_CALL = s3_errors.Call("put_object", "ctx", "build-contexts/a/b.tar.gz", "build-contexts/", "E")


def client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} says no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "typed", "reason", "retryable"),
    [
        ("AccessDenied", 403, Forbidden, "StorageForbidden", False),
        ("InvalidAccessKeyId", 403, Forbidden, "StorageForbidden", False),
        ("NoSuchBucket", 404, Unavailable, "StorageUnavailable", True),
        ("EntityTooLarge", 400, TooLarge, "ContextTooLarge", False),
        ("SlowDown", 503, Unavailable, "StorageUnavailable", True),
        ("InternalError", 500, Unavailable, "StorageUnavailable", True),
        ("PreconditionFailed", 412, PreconditionFailed, "StorageUnavailable", False),
        ("NoSuchKey", 404, NotFound, "StorageUnavailable", False),
        ("NoSuchUpload", 404, NotFound, "StorageUnavailable", False),
        ("NotImplemented", 501, Unsupported, "StorageUnavailable", False),
        ("InvalidArgument", 400, Unavailable, "StorageUnavailable", False),
    ],
)
def test_s3_codes_map_onto_one_typed_failure_each(
    code: str, status: int, typed: type[StoreError], reason: str, retryable: bool
) -> None:
    failure = s3_errors.translate(client_error(code, status), 3, S3_CALL)

    assert type(failure) is typed
    assert failure.reason == reason and failure.retryable is retryable
    assert failure.code == code


def test_s3_messages_name_the_call_the_object_and_the_fix() -> None:
    denied = s3_errors.translate(client_error("AccessDenied", 403), 1, S3_CALL)
    busy = s3_errors.translate(client_error("SlowDown", 503), 4, S3_CALL)
    missing = s3_errors.translate(NoCredentialsError(), 1, S3_CALL)

    assert denied is not None and "s3:PutObject" in denied.message
    assert "arn:aws:s3:::ctx/build-contexts/*" in denied.message
    assert busy is not None and "after 4 attempt(s)" in busy.message
    assert "s3://ctx/build-contexts/a/b.tar.gz" in busy.message
    assert type(missing) is Forbidden and "AWS_ACCESS_KEY_ID" in missing.message


def test_s3_retries_only_what_can_pass() -> None:
    boundary = s3_errors.BOUNDARY
    assert boundary.transient(client_error("SlowDown", 503))
    assert boundary.transient(client_error("Whatever", 502))
    assert boundary.transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not boundary.transient(client_error("NotImplemented", 501))
    assert not boundary.transient(client_error("AccessDenied", 403))
    assert not boundary.transient(ValueError("not botocore's"))
    assert s3_errors.translate(ValueError("not botocore's"), 1, S3_CALL) is None


# --- Kubernetes: the client's failures ----------------------------------------------------------


def kube_call(verb: str = "get", name: str = "fix-it-build-context-x") -> kube_errors.Call:
    return kube_errors.Call(verb, "team-a", name, "https://k8s", RetryPolicy(attempts=4))


def api_exception(status: int, message: str = "no") -> ApiException:
    error = ApiException(status=status, reason="Reason")
    error.body = f'{{"kind": "Status", "message": "{message}"}}'
    return error


@pytest.mark.parametrize(
    ("status", "verb", "typed", "reason"),
    [
        (401, "get", Forbidden, "StorageForbidden"),
        (403, "patch", Forbidden, "StorageForbidden"),
        (404, "create", Forbidden, "StorageForbidden"),
        (404, "list", Forbidden, "StorageForbidden"),
        (404, "get", NotFound, "StorageUnavailable"),
        (409, "delete", Conflict, "InternalError"),
        (410, "list", Unavailable, "StorageUnavailable"),
        (422, "patch", Rejected, "InternalError"),
        (503, "get", Unavailable, "StorageUnavailable"),
        (429, "get", Unavailable, "StorageUnavailable"),
    ],
)
def test_kube_statuses_map_onto_one_typed_failure_each(
    status: int, verb: str, typed: type[StoreError], reason: str
) -> None:
    failure = kube_errors.translate(api_exception(status), 4, kube_call(verb))

    assert type(failure) is typed and failure.reason == reason


def test_kube_messages_name_the_fix() -> None:
    forbidden = kube_errors.translate(api_exception(403), 1, kube_call("patch"))
    down = kube_errors.translate(api_exception(503, "etcd leader changed"), 4, kube_call())
    refused = kube_errors.translate(
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        4,
        kube_call(),
    )

    assert forbidden is not None and "knative/base/rbac.yaml" in forbidden.message
    assert "create, get, list, patch" in forbidden.message
    assert down is not None and "within 4 attempts" in down.message
    assert "etcd leader changed" in down.message
    assert type(refused) is Unavailable and refused.retryable is True
    assert kube_errors.translate(KeyError("x"), 1, kube_call()) is None


def test_a_conflict_is_also_the_internal_error_the_reply_names() -> None:
    failure = kube_errors.translate(api_exception(409), 1, kube_call("create"))
    assert isinstance(failure, InternalError) and isinstance(failure, StoreError)


# --- the shared call wrapper ------------------------------------------------------------------


class Boundary:
    def transient(self, error: BaseException) -> bool:
        return isinstance(error, TimeoutError)

    def describe(self, error: BaseException) -> str:
        return f"described {error}"


def test_a_call_is_retried_counted_and_logged_then_typed(caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(MeterProvider(metric_readers=[reader]), NoOpTracerProvider())
    slept: list[float] = []
    calls = StorageCalls("test", Boundary(), telemetry, RetryPolicy(attempts=3), slept.append)
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        raise TimeoutError("slow")

    def typed(error: BaseException, count: int) -> StoreError | None:
        return Unavailable(f"gave up after {count}") if isinstance(error, TimeoutError) else None

    with caplog.at_level(logging.WARNING), pytest.raises(Unavailable, match="gave up after 3"):
        calls.run("op", flaky, typed, span="s", attributes={}, fields={"where": "here"})

    assert len(attempts) == 3 and len(slept) == 2
    retried = [r for r in caplog.records if r.getMessage() == "storage call retried"]
    assert [(r.__dict__["operation"], r.__dict__["attempt"]) for r in retried] == [
        ("op", 1),
        ("op", 2),
    ]
    assert retried[0].__dict__["where"] == "here"
    assert retried[0].__dict__["error"] == "described slow"
    counted = [point.value for point in data_points(reader, "build_context.storage.retries")]
    assert counted == [2]


def test_an_exception_the_boundary_does_not_know_passes_unchanged() -> None:
    calls = StorageCalls(
        "test", Boundary(), Telemetry(MeterProvider(), NoOpTracerProvider()), RetryPolicy()
    )

    def broken() -> None:
        raise KeyError("ours")

    with pytest.raises(KeyError):
        calls.run("op", broken, lambda error, n: None, span="s", attributes={}, fields={})


# --- codecs -------------------------------------------------------------------------------------


def test_s3_metadata_round_trips_and_stays_within_the_budget() -> None:
    layout = Layout("build-contexts/")
    kept = record(request_id="req 1/é", metadata={"team": "payments"})
    dropped = record(metadata={"big": "x" * METADATA_BUDGET})
    key = layout.key("team-a", "fix-it", HASH)

    assert layout.record(key, object_metadata(kept), retain=True) == ContextRecord(
        **{**kept.__dict__, "retain": True}
    )
    assert all(value.isascii() for value in object_metadata(kept).values())
    assert "metadata" not in object_metadata(dropped)
    assert layout.matches(key) and not layout.matches(key + "\n")
    with pytest.raises(ValueError, match="does not match the key"):
        layout.record(layout.key("team-a", "other", HASH), object_metadata(kept), retain=False)


def test_configmap_metadata_round_trips_and_refuses_what_is_not_ours() -> None:
    built = archive.build({"remediation.py": "print(1)\n", "Dockerfile": "FROM scratch\n"})
    kept = record(
        content_hash=built.content_hash,
        archive_sha256=built.archive_sha256,
        size_bytes=built.size_bytes,
        metadata={"team": "payments"},
    )
    owner = OwnerReference(api_version="v1", kind="ConfigMap", name="o", uid="u-1")
    body = configmap_body(built, kept, owner)

    assert record_from_metadata(body["metadata"]) == kept
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    foreign = {**body["metadata"], "labels": {}}
    with pytest.raises(ValueError, match="managed-by"):
        record_from_metadata(foreign)


# --- the base class's defaults --------------------------------------------------------------


class DeletesOneAtATimeDouble(Store[int]):
    """Test double: the primitives only, to show what the base class adds."""

    backend = "double"

    def put_if_absent(
        self, archive: Archive, record: ContextRecord, owner: OwnerReference | None = None
    ) -> Stored:
        raise NotImplementedError

    def get(self, namespace: str, function: str, content_hash: str) -> bytes:
        raise NotImplementedError

    def list(self, namespaces: frozenset[str] | None = None) -> Iterator[Listed[int]]:
        return iter(())

    def delete(self, item: Listed[int], still_expired: StillExpired) -> Deletion:
        if item.handle == 2:
            raise Unavailable("the second one fails")
        return Deletion.DELETED if still_expired(item.record) else Deletion.KEPT


def test_delete_many_defaults_to_one_delete_at_a_time_with_an_outcome_each() -> None:
    store = DeletesOneAtATimeDouble()
    items = [Listed(record(function=f"fn-{i}"), i) for i in range(4)]

    outcomes = store.delete_many(items, lambda current: current.function != "fn-3")

    assert outcomes[:2] == [Deletion.DELETED, Deletion.DELETED]
    assert isinstance(outcomes[2], Unavailable)
    assert outcomes[3] is Deletion.KEPT
    assert store.sweep_leftovers(T0, dry_run=False).removed == 0


def test_only_a_missing_bucket_or_no_credentials_stop_start_up() -> None:
    def problem(error: BaseException) -> str | None:
        failure = s3_errors.translate(error, 1, S3_CALL)
        assert failure is not None
        found = s3_errors.startup_problem(failure, "ctx", "http://s3")
        return None if found is None else found.variable

    assert problem(client_error("NoSuchBucket", 404)) == "BUILD_CONTEXT_S3_BUCKET"
    assert problem(NoCredentialsError()) == "AWS_ACCESS_KEY_ID"
    assert problem(client_error("AccessDenied", 403)) is None
    assert problem(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) is None
