"""The context record's one table (function.record): every store, the reply and the provenance
follow it, so a field added to it is kept by every store, and what stores hold today still
reads back, byte for byte as written (tests/fixtures/records, written by the version before
the table)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import pytest

from function import archive, provenance
from function import record as records
from function.archive import Archive, image_tag
from function.contract import BuildContextCreated
from function.provenance import BuildParameters
from function.record import COUNT, NAME, TEXT, ContextRecord, Place, Wire
from function.settings import load_settings
from function.stores.base import Store
from function.stores.configmap.codec import configmap_body
from function.stores.configmap.codec import record_from_metadata as configmap_record
from function.stores.filesystem import RECORD, record_file
from function.stores.oci import EMPTY_DIGEST, ContextImage, record_manifest
from function.stores.oci.client import OCI_MANIFEST
from function.stores.oci.image import record_from_manifest
from function.stores.s3.codec import Layout, object_metadata
from function.validation import parse, validate
from function.verification import Statement
from tests.support.records import record as base_record
from tests.support.stores import (
    DAY,
    EVERY_BACKEND,
    OPENERS,
    T0,
    WEEK,
    ConfigMapUnderTest,
    FilesystemUnderTest,
    OCIUnderTest,
    S3UnderTest,
    StoreUnderTest,
)

FIXTURES = Path(__file__).parent / "fixtures" / "records"
WRITTEN = ContextRecord(
    namespace="team-a",
    function="fix-disk",
    runtime="python",
    runtime_version="3.13",
    content_hash="3f" * 32,
    archive_sha256="c9" * 32,
    size_bytes=1234,
    created_at=datetime(2026, 3, 1, 12, tzinfo=UTC),
    expires_at=datetime(2026, 3, 8, 12, tzinfo=UTC),
    request_id="req:7/ü 1",
    metadata={"incident": "INC-42", "note": "naïve", "team": "sre"},
)
"""The record the fixtures hold: a request id and metadata that need escaping somewhere."""


@dataclass(frozen=True)
class ExtendedRecord(ContextRecord):
    """The record with fields a later version might add: free text (escaped by S3) that the
    provenance records, a count, and a label (the ConfigMap store selects by it)."""

    added_text: Annotated[str, Wire(TEXT, attested=True)] = ""
    added_count: Annotated[int, Wire(COUNT)] = 0
    added_label: Annotated[str, Wire(NAME, Place.LABEL)] = ""


@pytest.fixture(params=EVERY_BACKEND)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    yield from OPENERS[request.param](request, tmp_path)


def extended(record: ContextRecord, **fields: Any) -> ExtendedRecord:
    return ExtendedRecord(**{**vars(record), **fields})


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- a field added to the table ---------------------------------------------------------------


def test_a_field_added_to_the_table_is_kept_by_every_store(
    store: StoreUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "MODEL", ExtendedRecord)
    built = store.built("fix-it")
    wanted = extended(
        base_record(built, T0, WEEK, function="fix-it", metadata={"incident": "INC-1"}),
        added_text="OPS-7 ü/100%",
        added_count=3,
        added_label="sre",
    )

    assert store.client.put_if_absent(built, wanted).record == wanted
    other = store.second_client()  # reads what is stored, not what a client remembers
    assert [item.record for item in other.list()] == [wanted]
    assert list(other.function_contexts("team-a", "fix-it")) == [wanted]

    # A reuse refreshes the expiry, rewriting the record: every field survives, as first stored.
    later = replace(wanted, created_at=T0 + DAY, expires_at=T0 + DAY + WEEK, added_text="x")
    again = other.put_if_absent(built, later)
    refreshed = replace(wanted, expires_at=later.expires_at)
    assert again.reused and again.record == refreshed
    assert [item.record for item in store.second_client().list()] == [refreshed]


def test_the_provenance_records_the_attested_fields_and_verify_accepts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    recorded = validate(parse({"lambdaFunction": "fix-it", "sourceCode": "print(1)\n"}), settings)
    parameters = BuildParameters(recorded.recorded, (), "req-1", "/agent")
    built = archive.build({"remediation.py": "print(1)\n"})
    internal = provenance.internal_parameters(settings)
    statement = provenance.statement(built, {}, parameters, internal, "", T0, T0)
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    for f in records.fields():
        if f.wire.attested:
            assert external[f.name] == f.wire.codec.to_json(recorded.recorded[f.attr])
    assert Statement.model_validate(statement).external.function == "fix-it"

    monkeypatch.setattr(records, "MODEL", ExtendedRecord)
    wanted = {**parameters.recorded, "added_text": "OPS-7"}
    assert replace(parameters, recorded=wanted).external({})["addedText"] == "OPS-7"
    with pytest.raises(KeyError, match="added_text"):
        parameters.external({})  # an attested field cannot be left out of the statement


def test_the_reply_echoes_every_field_the_table_says_it_does() -> None:
    replies = {f.wire.reply for f in records.fields(ContextRecord) if f.wire.reply}
    assert replies <= set(BuildContextCreated.model_fields)
    assert records.echoed(WRITTEN)["created_by_request_id"] == WRITTEN.request_id
    assert set(records.echoed(WRITTEN)) == replies


# --- what stores hold today reads back, and is written again the same ---------------------------


def assert_written_again(now: Any, before: Any) -> None:
    """Every key written before is written again with the same value, byte for byte; a field
    added to the table may only add keys."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key, value in before.items():
            assert key in now, key
            assert_written_again(now[key], value)
    else:
        assert now == before


def test_the_record_file_of_today_reads_back_and_is_written_the_same() -> None:
    written = json.loads(fixture("filesystem.context.json"))
    assert records.from_json(written) == WRITTEN
    assert_written_again(json.loads(record_file(WRITTEN)), written)


def test_configmap_labels_and_annotations_of_today_read_back_and_are_written_the_same() -> None:
    written = json.loads(fixture("configmap.metadata.json"))
    archive = Archive(b"", WRITTEN.content_hash, WRITTEN.archive_sha256, ())
    assert configmap_record(written) == WRITTEN
    assert_written_again(configmap_body(archive, WRITTEN, None)["metadata"], written)


def test_s3_user_metadata_of_today_reads_back_and_is_written_the_same() -> None:
    written = json.loads(fixture("s3.metadata.json"))
    key = Layout("build-contexts/").key("team-a", "fix-disk", WRITTEN.content_hash)
    assert Layout("build-contexts/").record(key, written, retain=False) == WRITTEN
    assert_written_again(object_metadata(WRITTEN), written)


def test_oci_manifests_of_today_read_back_and_the_context_digest_never_changes() -> None:
    """The context image is byte for byte today's whatever the table adds (builders pin its
    digest); the record manifest keeps every annotation it had."""
    context = ContextImage.from_record(WRITTEN)
    written = fixture("oci.record-manifest.json")
    assert context.manifest == fixture("oci.context-manifest.json")
    assert record_from_manifest(written) == (WRITTEN, context.digest)
    assert_written_again(json.loads(record_manifest(WRITTEN, context)), json.loads(written))


def test_records_of_today_read_into_a_table_with_a_new_field_take_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records, "MODEL", ExtendedRecord)
    old = extended(WRITTEN)
    assert records.from_json(json.loads(fixture("filesystem.context.json"))) == old
    assert configmap_record(json.loads(fixture("configmap.metadata.json"))) == old
    assert record_from_manifest(fixture("oci.record-manifest.json"))[0] == old
    key = Layout("p/").key("team-a", "fix-disk", WRITTEN.content_hash)
    assert Layout("p/").record(key, json.loads(fixture("s3.metadata.json")), False) == old


def plant_written(store: StoreUnderTest) -> None:
    """Today's fixtures, put in place as the version before the table wrote them."""
    if isinstance(store, FilesystemUnderTest):
        folder = store.folder(WRITTEN)
        folder.mkdir(parents=True)
        (folder / RECORD).write_bytes(fixture("filesystem.context.json"))
        (folder / "context.tar.gz").write_bytes(b"archive")
    elif isinstance(store, ConfigMapUnderTest):
        metadata = json.loads(fixture("configmap.metadata.json"))
        body = {
            "metadata": metadata,
            "binaryData": {"context.tar.gz": base64.b64encode(b"a").decode()},
        }
        store.admin.create_namespaced_config_map(WRITTEN.namespace, body)
    elif isinstance(store, S3UnderTest):
        metadata = json.loads(fixture("s3.metadata.json"))
        key = store.key(WRITTEN)
        store.admin.put_object(Bucket=store.bucket, Key=key, Body=b"archive", Metadata=metadata)
    else:
        assert isinstance(store, OCIUnderTest)
        client = cast(Any, store.client).client
        repository = f"{store.prefix}/{WRITTEN.namespace}/{WRITTEN.function}"
        client.upload_blob(repository, EMPTY_DIGEST, b"{}")
        tag = image_tag(WRITTEN.content_hash) + ".record"
        client.put_manifest(repository, tag, fixture("oci.record-manifest.json"), OCI_MANIFEST)


def test_every_store_lists_a_context_stored_today(store: StoreUnderTest) -> None:
    plant_written(store)
    client: Store[Any] = store.second_client()
    assert [item.record for item in client.list()] == [WRITTEN]
