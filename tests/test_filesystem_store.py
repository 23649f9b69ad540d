"""The filesystem store's promises: atomic appearance, reuse, one context under concurrency."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from function import archive
from function.stores.base import ContextRecord, Deletion
from function.stores.filesystem import FilesystemStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(built: archive.Archive, at: datetime = NOW, ttl: int = 60) -> ContextRecord:
    return ContextRecord.for_archive(
        built,
        namespace="ns",
        function="fn",
        runtime="python",
        runtime_version="3.13",
        created_at=at,
        ttl=timedelta(seconds=ttl),
        request_id="r",
    )


BUILT = archive.build({"remediation.py": "print(1)\n", "Dockerfile": "FROM x\n"})


def test_put_then_reuse_pushes_expiry_forward(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    first = store.put_if_absent(BUILT, record(BUILT))
    later = store.put_if_absent(BUILT, record(BUILT, NOW + timedelta(hours=1)))
    assert (first.reused, later.reused) == (False, True)
    assert later.record.created_at == NOW
    assert later.record.expires_at == NOW + timedelta(hours=1, seconds=60)
    assert store.get("ns", "fn", BUILT.content_hash) == BUILT.data
    earlier = store.put_if_absent(BUILT, record(BUILT, NOW - timedelta(days=1)))
    assert earlier.record.expires_at == later.record.expires_at, "expiry never moves back"


def test_a_crash_mid_write_leaves_no_visible_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path)

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(Exception, match="No space left"):
        store.put_if_absent(BUILT, record(BUILT))
    monkeypatch.undo()
    assert list(store.list()) == []
    with pytest.raises(KeyError):
        store.get("ns", "fn", BUILT.content_hash)
    assert not list(store.stale_temporaries())


def _put_in_process(root: str) -> bool:
    return FilesystemStore(Path(root)).put_if_absent(BUILT, record(BUILT)).reused


def test_concurrent_identical_puts_from_threads_and_processes_store_once(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as threads:
        thread_results = list(threads.map(lambda _: _put_in_process(str(tmp_path)), range(16)))
    with multiprocessing.get_context("spawn").Pool(4) as processes:
        process_results = processes.map(_put_in_process, [str(tmp_path)] * 8)
    assert thread_results.count(False) == 1 and all(process_results)
    assert [item.record.content_hash for item in FilesystemStore(tmp_path).list()] == [
        BUILT.content_hash
    ]


def test_delete_rechecks_the_freshest_record(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.put_if_absent(BUILT, record(BUILT))
    (item,) = store.list()
    store.put_if_absent(BUILT, record(BUILT, NOW + timedelta(days=1)))
    later = NOW + timedelta(minutes=5)
    assert store.delete(item, lambda fresh: fresh.expired(later)) is Deletion.KEPT
    assert store.delete(item, lambda fresh: fresh.expired(later + timedelta(days=2))) is (
        Deletion.DELETED
    )
    assert list(store.list()) == []
