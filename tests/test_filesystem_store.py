"""The filesystem store's promises: atomic appearance, reuse, one context under concurrency."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from function import archive
from function.stores.base import Deletion
from function.stores.filesystem import FilesystemStore
from tests.support.records import NOW, record

BUILT = archive.build({"remediation.py": "print(1)\n", "Dockerfile": "FROM x\n"})


def test_put_then_reuse_pushes_expiry_forward(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    first = store.put_if_absent(BUILT, record(BUILT))
    later = store.put_if_absent(BUILT, record(BUILT, NOW + timedelta(hours=1)))
    assert (first.reused, later.reused) == (False, True)
    assert later.record.created_at == NOW
    assert later.record.expires_at == NOW + timedelta(hours=2)
    assert store.get("team-a", "fix-it", BUILT.content_hash) == BUILT.data
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
        store.get("team-a", "fix-it", BUILT.content_hash)
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
    later = NOW + timedelta(hours=2)  # the listed record expired, the fresh one did not
    assert store.delete(item, lambda fresh: fresh.expired(later)) is Deletion.KEPT
    assert store.delete(item, lambda fresh: fresh.expired(later + timedelta(days=2))) is (
        Deletion.DELETED
    )
    assert list(store.list()) == []


def test_every_write_is_fsynced_before_the_reply_recording_spy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of fsyncs and renames, recorded by a spy on os (no crash test can run here):
    archive, record and the temporary folder are durable before the rename makes the context
    visible, and the function folder after it; a refresh makes its folder durable too."""
    store = FilesystemStore(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src: str | Path, dst: str | Path) -> None:
        real_rename(src, dst)
        events.append(("rename", str(dst)))

    def replace(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    stored = store.put_if_absent(BUILT, record(BUILT))
    folder = Path(stored.storage["path"]).parent
    renamed = events.index(("rename", str(folder)))
    before = {Path(path).name for kind, path in events[:renamed] if kind == "fsync"}
    assert {"context.tar.gz", "context.json"} <= before
    assert any(name.startswith(".tmp-") for name in before), "the temporary folder"
    assert ("fsync", str(folder.parent)) in events[renamed:], "the function folder"

    events.clear()
    store.put_if_absent(BUILT, record(BUILT, NOW + timedelta(hours=1)))
    replaced = events.index(("replace", str(folder / "context.json")))
    assert ("fsync", str(folder)) in events[replaced:], "the refreshed record's folder"
    store.close()


def test_a_failed_fsync_leaves_no_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemStore(tmp_path)
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("context.json"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(Exception, match="Input/output error"):
        store.put_if_absent(BUILT, record(BUILT))
    monkeypatch.undo()
    assert list(store.list()) == []
    assert not list(store.stale_temporaries()), "the temporary folder is removed"
    assert store.put_if_absent(BUILT, record(BUILT)).reused is False
    store.close()
