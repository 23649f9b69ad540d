"""150 simultaneous requests to the real server, per store: every one answered and stored once.

Runtimes and source sizes (1 KB to 900 KB) are mixed and every tenth request repeats an
earlier one, so identical requests race each other. The assertions are about correctness and
resource bounds, never about time: `python -m bench` measures speed.
"""

from __future__ import annotations

import gzip
import hashlib
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest

from bench import workload
from bench.load import MemoryWatch, Reply, send
from function.cleanup import CleanupService
from function.settings import Settings, load_settings
from function.stores import Store, open_store
from function.workers import process_count
from tests.conftest import StartServer
from tests.support.contexts import members, read_member
from tests.support.server import FunctionServer

BURST = 150
MIB = 1024 * 1024
GROWTH_LIMIT = 96 * MIB
"""How much the resident memory of each server process may grow over two bursts, after a
warm-up that ended with a whole burst of other programs. Measured: up to 60-68 MiB per worker
on Python 3.13, where freed parse trees leave the allocator at whatever peak the burst's timing
reached, mostly 10-25 MiB. Requests that left their big pieces behind (the parse tree of one
900 KB Go source is about 22 MiB, and a burst has 7 of them, plus 22 of 100 KB) would add well
over this in two bursts; a leak of a few bytes per request would not show."""
ENTRY = {"python": "remediation.py", "nodejs": "remediation.js", "go": "remediation.go"}


def burst() -> list[workload.Request]:
    requests = workload.mixed(BURST, seed=8, identical_every=10)
    assert {r.size for r in requests} == set(workload.SIZES)
    assert {r.runtime for r in requests} == set(workload.RUNTIMES)
    assert len({r.key for r in requests}) < BURST
    return requests


def warm_up(server: FunctionServer) -> set[tuple[str, str]]:
    """Every worker thread sees every runtime at every size, then a whole burst of other
    programs, so lazily built state (parsers per thread, imports, allocator arenas at their
    high-water mark) exists in every server process before the baseline; returns what it
    stored."""
    requests = [
        workload.request(runtime, size, salt=900_000 + i)
        for i, (runtime, size) in enumerate(
            (r, s) for s in workload.SIZES for r in workload.RUNTIMES
        )
    ]
    settings = load_settings()
    concurrency = settings.server_threads * process_count(settings)
    stored = set()
    rehearsal = workload.mixed(BURST, seed=7, identical_every=10)
    for order, at_once in (
        (requests, concurrency),
        (requests[::-1], concurrency),
        (rehearsal, BURST),
    ):
        run = send(server.url, order, concurrency=at_once)
        assert not run.failures, run.failures[:3]
        stored |= {(r.data["lambdaFunction"], r.data["contentHash"]) for r in run.replies}
    return stored


def in_process_store(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Store[Any], Settings]:
    """A second client on the server's storage, with a cleanup policy that keeps nothing."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(keep_latest=0, cleanup_grace_seconds=0)
    return open_store(settings.storage, settings), settings


def check_burst(
    start_server: StartServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(**env)
    assert server.process is not None
    warmed = warm_up(server)
    processes = MemoryWatch(server.process.pid).tree()  # the server and its worker processes
    before = {p.pid: p.memory_info().rss for p in processes}

    run = send(server.url, burst(), concurrency=BURST)
    again = send(server.url, burst(), concurrency=BURST)  # reuses, parsed all the same

    after = {p.pid: p.memory_info().rss for p in processes}
    assert "connection limit" not in server.log(), "callers waited for a connection slot"
    assert len(run.replies) == BURST
    assert not run.failures, run.failures[:3]
    assert not again.failures and all(r.data["reused"] for r in again.replies), again.failures[:3]
    contexts = check_stored_once(run.replies)
    grown = {pid: after[pid] - before[pid] for pid in before}
    assert max(grown.values()) < GROWTH_LIMIT, "RSS per server process grew " + ", ".join(
        f"{(after[pid] - before[pid]) / MIB:.0f} MiB ({before[pid] / MIB:.0f} -> "
        f"{after[pid] / MIB:.0f})"
        for pid in before
    )
    store, settings = in_process_store(env, monkeypatch)
    try:
        check_extracts(store, settings.home_namespace, contexts)
        listed = [(i.record.function, i.record.content_hash) for i in store.list()]
        created = {(r.data["lambdaFunction"], r.data["contentHash"]) for r in contexts.values()}
        assert sorted(listed) == sorted(warmed | created)
        check_cleanup(store, settings, expected=len(listed))
    finally:
        store.close()


def check_stored_once(replies: list[Reply]) -> dict[str, Reply]:
    """One context per distinct request; identical requests got it once created, else reused."""
    by_key: dict[str, list[Reply]] = defaultdict(list)
    for reply in replies:
        by_key[reply.request.key].append(reply)
    contexts: dict[str, Reply] = {}
    for key, same in by_key.items():
        hashes = {r.data["contentHash"] for r in same}
        assert len(hashes) == 1, f"{key}: identical requests, different contexts {hashes}"
        created = [r for r in same if not r.data["reused"]]
        assert len(created) == 1, f"{key}: {len(created)} of {len(same)} replies say created"
        contexts[key] = created[0]
    assert len({r.data["contentHash"] for r in contexts.values()}) == len(contexts)
    return contexts


def check_extracts(store: Store[Any], namespace: str, contexts: dict[str, Reply]) -> None:
    """Each archive, read back through a second client, is the reply's and holds the source."""
    for reply in contexts.values():
        data = reply.data
        archive = store.get(namespace, data["lambdaFunction"], data["contentHash"])
        assert hashlib.sha256(archive).hexdigest() == data["archiveSha256"]
        assert hashlib.sha256(gzip.decompress(archive)).hexdigest() == data["contentHash"]
        names = set(members(archive))
        assert names == set(data["files"])
        assert {"Dockerfile", ENTRY[reply.request.runtime]} <= names
        assert read_member(archive, ENTRY[reply.request.runtime]) == reply.request.entry_source


def check_cleanup(store: Store[Any], settings: Settings, expected: int) -> None:
    """Cleanup, with its clock past every TTL, deletes exactly what the requests created."""
    moment = max(i.record.expires_at for i in store.list()) + timedelta(seconds=1)
    completed = CleanupService([store], settings, clock=lambda: moment).run()
    summary = completed.stores[0]
    assert summary.errors == 0, summary
    assert summary.deleted == expected, summary
    assert list(store.list()) == []


def test_burst(
    start_server: StartServer, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_burst(start_server, store_env, monkeypatch)
