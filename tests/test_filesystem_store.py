"""The filesystem store's promises: atomic appearance, reuse, one context under concurrency."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable
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


def _archive(index: int) -> archive.Archive:
    return archive.build({"remediation.py": f"print({index})\n" * (index + 1), "Dockerfile": "x"})


def _put_range(root: str, first: int, last: int) -> None:
    store = FilesystemStore(Path(root))
    for index in range(first, last):
        store.put_if_absent(_archive(index), record(_archive(index)))
    store.close()


def _killed_at_rename(root: str, index: int, delete: bool) -> None:
    """Put (or delete) one context and be SIGKILLed right before its rename: its change is
    logged and never made."""
    store = FilesystemStore(Path(root))
    listed = [
        item for item in store.list() if item.record.content_hash == _archive(index).content_hash
    ]
    os.rename = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    if delete:
        store.delete(listed[0], lambda fresh: True)
    else:
        store.put_if_absent(_archive(index), record(_archive(index)))


def _delete_every_other(root: str) -> None:
    store = FilesystemStore(Path(root))
    for number, item in enumerate(sorted(store.list(), key=lambda i: i.record.content_hash)):
        if number % 2 == 0:
            store.delete(item, lambda fresh: True)
    store.close()


def test_the_sizes_the_caps_read_stay_exact_across_processes_kills_and_cleanups(
    tmp_path: Path,
) -> None:
    """The per-function sizes a process keeps (no rescan) are what the folder holds, whatever
    other processes did meanwhile: stored, been SIGKILLed between logging a change and making
    it (put and delete), cleaned up."""
    store = FilesystemStore(tmp_path)

    def kept() -> list[tuple[str, int]]:
        return sorted(store.function_sizes("team-a", "fix-it"))

    def truth() -> list[tuple[str, int]]:
        return sorted((i.record.content_hash, i.record.size_bytes) for i in store.list())

    spawn = multiprocessing.get_context("spawn")

    def run(target: Callable[..., None], *args: object, killed: bool = False) -> None:
        child = spawn.Process(target=target, args=(str(tmp_path), *args))
        child.start()
        child.join(60)
        assert child.exitcode == (-signal.SIGKILL if killed else 0)

    assert kept() == []
    run(_put_range, 0, 6)
    assert kept() == truth() and len(truth()) == 6
    _put_range(str(tmp_path), 6, 8)  # this process, another instance
    store.put_if_absent(_archive(8), record(_archive(8)))
    assert kept() == truth() and len(truth()) == 9
    run(_killed_at_rename, 9, False, killed=True)
    assert kept() == truth() and len(truth()) == 9
    run(_killed_at_rename, 3, True, killed=True)
    assert kept() == truth() and len(truth()) == 9
    with ThreadPoolExecutor(2) as pool:  # two writers at once: a process and this one
        pool.submit(run, _put_range, 10, 16)
        for index in range(16, 20):
            store.put_if_absent(_archive(index), record(_archive(index)))
    assert kept() == truth() and len(truth()) == 19
    run(_delete_every_other)
    assert kept() == truth() and len(truth()) == 9
    run(_put_range, 20, 23)  # then this process deletes without looking first, as cleanup does
    (item,) = [i for i in store.list() if i.record.content_hash == _archive(8).content_hash]
    assert store.delete(item, lambda fresh: True) is Deletion.DELETED
    assert kept() == truth() and len(truth()) == 11
    store.close()


def test_a_process_writing_many_functions_keeps_few_open_and_stays_exact(tmp_path: Path) -> None:
    """Past its limit of open functions a process closes the least recently used one (its two
    descriptors); coming back to it, the sizes are read again and still exact."""
    store = FilesystemStore(tmp_path, open_functions=2)
    names = [f"fn-{n}" for n in range(5)]
    for round_ in range(2):
        for number, name in enumerate(names):
            made = _archive(10 * number + round_)
            store.put_if_absent(made, record(made, function=name))
    for name in names:
        assert sorted(store.function_sizes("team-a", name)) == sorted(
            (i.record.content_hash, i.record.size_bytes)
            for i in store.list()
            if i.record.function == name
        )
        assert len(list(store.function_sizes("team-a", name))) == 2
    store.close()


def test_a_function_folder_removed_by_hand_is_made_again_on_the_next_put(tmp_path: Path) -> None:
    """The kept lock file and folder descriptors of a deleted folder lock nothing: the store
    notices (the lock file has no name left) and opens the new ones."""
    store = FilesystemStore(tmp_path)
    store.put_if_absent(_archive(1), record(_archive(1)))
    shutil.rmtree(tmp_path / "team-a" / "fix-it")
    assert store.put_if_absent(_archive(2), record(_archive(2))).reused is False
    assert sorted(store.function_sizes("team-a", "fix-it")) == [
        (_archive(2).content_hash, _archive(2).size_bytes)
    ]
    store.close()
