"""Smoke tests of the SeaweedFS S3 server that backs the S3 store tests (the session's
`seaweed` fixture, tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.s3

MIB = 1024 * 1024


@pytest.fixture
def s3(seaweed: SeaweedS3) -> Any:
    return seaweed.client()


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def upload_parts(
    s3: Any, bucket: str, key: str, parts: list[bytes]
) -> tuple[str, list[dict[str, Any]]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    uploaded = [
        {
            "PartNumber": number,
            "ETag": s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )["ETag"],
        }
        for number, body in enumerate(parts, start=1)
    ]
    return upload_id, uploaded


def test_put_get_round_trips_user_metadata(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key="ctx.tar",
        Body=b"payload",
        Metadata={"digest": "sha256:ab", "expires-at": "1700000000"},
    )

    got = s3.get_object(Bucket=bucket, Key="ctx.tar")

    assert got["Body"].read() == b"payload"
    assert got["Metadata"] == {"digest": "sha256:ab", "expires-at": "1700000000"}


def test_head_object_lowercases_metadata_keys(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="k", Body=b"x", Metadata={"Expires-At": "1", "MixedCase": "Value"}
    )

    assert s3.head_object(Bucket=bucket, Key="k")["Metadata"] == {
        "expires-at": "1",
        "mixedcase": "Value",
    }


def test_list_objects_pages_with_continuation_tokens(s3: Any, bucket: str) -> None:
    keys = [f"obj-{i:02d}" for i in range(30)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

    listed: list[str] = []
    pages = 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "MaxKeys": 10}
    while True:
        page = s3.list_objects_v2(**kwargs)
        pages += 1
        listed += [item["Key"] for item in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]

    assert listed == keys
    assert pages == 3


def test_delete_objects_removes_a_batch(s3: Any, bucket: str) -> None:
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}], "Quiet": False}
    )

    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "b"]
    assert not result.get("Errors")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["c"]


def test_multipart_upload_completes(s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(MIB)]
    upload_id, uploaded = upload_parts(s3, bucket, "big.tar", parts)

    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="big.tar", UploadId=upload_id, MultipartUpload={"Parts": uploaded}
    )

    assert done["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bucket, Key="big.tar")["Body"].read() == b"".join(parts)


def test_aborted_multipart_upload_leaves_no_object(s3: Any, bucket: str) -> None:
    upload_id, _ = upload_parts(s3, bucket, "aborted.tar", [os.urandom(MIB)])

    s3.abort_multipart_upload(Bucket=bucket, Key="aborted.tar", UploadId=upload_id)

    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=bucket, Key="aborted.tar")
    assert error_code(excinfo) == "404"


def test_restricted_identity_may_read_but_not_write(seaweed: SeaweedS3, s3: Any) -> None:
    if seaweed.restricted_bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=seaweed.restricted_bucket)
    s3.put_object(Bucket=seaweed.restricted_bucket, Key="visible", Body=b"x")
    restricted = seaweed.client(seaweed.restricted.access_key, seaweed.restricted.secret_key)

    assert (
        restricted.get_object(Bucket=seaweed.restricted_bucket, Key="visible")["Body"].read()
        == b"x"
    )
    with pytest.raises(ClientError) as excinfo:
        restricted.put_object(Bucket=seaweed.restricted_bucket, Key="denied", Body=b"x")
    assert error_code(excinfo) == "AccessDenied"


def test_put_if_none_match_refuses_existing_key(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")

    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")

    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_complete_multipart_if_none_match_refuses_existing_key(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"first")
    upload_id, uploaded = upload_parts(s3, bucket, "k", [b"second"])

    with pytest.raises(ClientError) as excinfo:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="k",
            UploadId=upload_id,
            MultipartUpload={"Parts": uploaded},
            IfNoneMatch="*",
        )

    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_copy_onto_itself_replaces_metadata(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="k", Body=b"data", Metadata={"expires-at": "100", "digest": "d"}
    )

    s3.copy_object(
        Bucket=bucket,
        Key="k",
        CopySource={"Bucket": bucket, "Key": "k"},
        MetadataDirective="REPLACE",
        Metadata={"expires-at": "200", "digest": "d"},
    )

    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"data"
    assert got["Metadata"] == {"expires-at": "200", "digest": "d"}


def test_if_match_guards_put_copy_and_delete(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    stale = '"00000000000000000000000000000000"'
    source = {"Bucket": bucket, "Key": "k"}

    stale_writes: list[Callable[[], Any]] = [
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=stale),
        lambda: s3.copy_object(
            Bucket=bucket, Key="k", CopySource=source, MetadataDirective="REPLACE", IfMatch=stale
        ),
        lambda: s3.delete_object(Bucket=bucket, Key="k", IfMatch=stale),
    ]
    for attempt in stale_writes:
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert error_code(excinfo) == "PreconditionFailed"

    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag)["ETag"]
    s3.copy_object(
        Bucket=bucket,
        Key="k",
        CopySource=source,
        MetadataDirective="REPLACE",
        Metadata={"a": "1"},
        IfMatch=etag,
    )
    s3.delete_object(Bucket=bucket, Key="k", IfMatch=etag)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
