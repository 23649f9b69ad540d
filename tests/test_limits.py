"""Limits per caller: the caps per function name hold under 150 concurrent requests, per store,
and no path walks around them (an expired context brought back is a new live one).

Every request is a different program for the same function name, sent all at once to the real
server (its default processes and threads); the store is then read back with a second client.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from function.create import CreateService
from function.settings import load_settings
from function.stores import open_store
from function.stores.base import ContextRecord, utcnow
from tests.conftest import StartServer
from tests.support.contexts import example
from tests.support.registry import Registry
from tests.support.server import FunctionServer, Reply, encode
from tests.support.stores import EXTRA, HOME, OPENERS, T0, StoreUnderTest

BURST = 150
CAP = 7
NAME = "flood-fix"


def program(index: int, name: str = NAME) -> dict[str, Any]:
    data = {**example("python"), "lambdaFunction": name}
    data["sourceCode"] += f"\n# variant {index}\n"
    return data


def burst(server: FunctionServer, programs: list[dict[str, Any]]) -> list[Reply]:
    def one(data: dict[str, Any]) -> Reply:
        headers, body = encode(data)
        with requests.Session() as session:
            return Reply(session.post(server.url, headers=headers, data=body, timeout=120))

    with ThreadPoolExecutor(len(programs)) as pool:
        return list(pool.map(one, programs))


def records_of(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str
) -> list[ContextRecord]:
    """The stored contexts of `name`, expired ones too, read with a second client on the same
    storage."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    store = open_store(settings.storage, settings)
    try:
        return [i.record for i in store.list() if i.record.function == name]
    finally:
        store.close()


def stored_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Sizes of the contexts of `name`, read with a second client on the same storage."""
    return [record.size_bytes for record in records_of(env, monkeypatch, name)]


def check_caps(
    start_server: StartServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(**env, BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION=str(CAP))
    programs = [program(i) for i in range(BURST)]
    replies = burst(server, programs)
    outcomes = Counter(
        (r.status, r.type, r.data.get("reason") if r.type == "buildcontext.failed" else None)
        for r in replies
    )
    assert outcomes == {
        (200, "buildcontext.created", None): CAP,
        (200, "buildcontext.failed", "QuotaExceeded"): BURST - CAP,
    }, outcomes
    refused = next(r for r in replies if r.type == "buildcontext.failed")
    assert refused.data["retryable"] is False
    assert "BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION" in refused.data["message"]
    assert refused.data["errors"][0]["field"] == "lambdaFunction"
    assert len(stored_of(env, monkeypatch, NAME)) == CAP, "nothing stored beyond the cap"

    # at the cap: a program already stored is reused, a new one refused, another name unaffected
    kept = next(
        p for p, r in zip(programs, replies, strict=True) if r.type == "buildcontext.created"
    )
    assert server.send(kept).data["reused"] is True
    assert server.send(program(BURST)).data["reason"] == "QuotaExceeded"
    other = server.send(program(0, name="other-fix"))
    assert other.type == "buildcontext.created", other

    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    refusals = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("build_context_quota_refused_total{") and 'limit="contexts"' in line
    )
    assert refusals >= BURST - CAP


def check_byte_cap(
    start_server: StartServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = start_server(**env)
    size = probe.send(program(0, name="size-probe")).data["sizeBytes"]
    probe.stop()
    cap = size * 4 + size // 2  # room for four of these archives (they differ by a byte or two)
    server = start_server(**env, BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION=str(cap))
    replies = burst(server, [program(i, name="bytes-fix") for i in range(BURST)])
    reasons = Counter(r.data.get("reason", "created") for r in replies)
    assert reasons == {"created": 4, "QuotaExceeded": BURST - 4}, reasons
    assert "BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION" in next(
        r.data["message"] for r in replies if r.type == "buildcontext.failed"
    )
    assert sum(stored_of(env, monkeypatch, "bytes-fix")) <= cap


def test_caps_hold_on_every_store(
    start_server: StartServer, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_caps(start_server, store_env, monkeypatch)
    check_byte_cap(start_server, store_env, monkeypatch)


# --- what each store tells the caps -----------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("filesystem"),
        pytest.param("configmap", marks=pytest.mark.kube),
        pytest.param("s3", marks=pytest.mark.s3),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    yield from OPENERS[request.param](request, tmp_path)


def test_each_store_lists_one_function_alone(store: StoreUnderTest) -> None:
    """`fix` and not `fix-2` (a name that starts the same), nor `fix` in another namespace;
    expired contexts too (the caps decide what is live)."""
    mine = [store.put("fix", T0 - timedelta(days=30 * i)) for i in range(3)]
    store.put("fix-2", T0)
    store.put("other", T0)
    store.put("fix", T0, namespace=EXTRA)
    found = sorted(r.content_hash for r in store.client.function_contexts(HOME, "fix"))
    assert found == sorted(r.content_hash for r in mine)
    sizes = sorted(store.client.function_sizes(HOME, "fix"))
    assert sizes == sorted((r.content_hash, r.size_bytes) for r in mine)
    assert list(store.client.function_contexts(HOME, "nobody")) == []
    assert list(store.client.function_sizes(HOME, "nobody")) == []


# --- a cap that cannot be walked around -------------------------------------------------

WALK_CAP = 3


def plant_expired(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, programs: list[dict[str, Any]]
) -> None:
    """What a pod stored ten minutes ago with the shortest TTL (60 s): expired now, and not yet
    deleted (cleanup has not run). The same service as the server's, with its clock set back,
    writes them through a client of its own."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    store = open_store(settings.storage, settings)
    past = utcnow() - timedelta(minutes=10)
    try:
        service = CreateService(settings, store, clock=lambda: past)
        for index, data in enumerate(programs):
            service.run({**data, "ttlSeconds": 60}, f"planted-{index}")
    finally:
        store.close()


def live_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str) -> list[ContextRecord]:
    now = utcnow()
    return [r for r in records_of(env, monkeypatch, name) if not r.expired(now)]


def check_no_walk_around(
    start_server: StartServer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three contexts expire, three new ones are made, the first three are sent again: the
    function would hold six live contexts under a cap of three."""
    first = [program(i, "walk-fix") for i in range(WALK_CAP)]
    burst_programs = [program(i, "walk-burst") for i in range(10)]
    plant_expired(env, monkeypatch, first + burst_programs)
    server = start_server(**env, BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION=str(WALK_CAP))

    made = [server.send(program(i, "walk-fix")) for i in range(WALK_CAP, 2 * WALK_CAP)]
    assert [r.type for r in made] == ["buildcontext.created"] * WALK_CAP, made
    for data in first:
        refused = server.send(data)
        assert refused.type == "buildcontext.failed", refused
        assert refused.data["reason"] == "QuotaExceeded", refused
        message = refused.data["message"]
        assert f"already has {WALK_CAP} live contexts" in message, message
        assert "this program's context has expired" in message, message
        assert "BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION" in message, message
        assert f"the next one expires at {min(r.data['expiresAt'] for r in made)}" in message
    assert len(live_of(env, monkeypatch, "walk-fix")) == WALK_CAP

    # a reuse of a live context is admitted: it adds none, and it pushes the expiry forward
    again = server.send({**program(WALK_CAP, "walk-fix"), "ttlSeconds": 30 * 86400})
    assert again.type == "buildcontext.created" and again.data["reused"] is True, again
    assert _time(again.data["expiresAt"]) > _time(made[0].data["expiresAt"])
    assert len(live_of(env, monkeypatch, "walk-fix")) == WALK_CAP

    # ten expired contexts sent again all at once, to every worker process: three come back
    replies = burst(server, burst_programs)
    reasons = Counter(r.data.get("reason", "created") for r in replies)
    assert reasons == {"created": WALK_CAP, "QuotaExceeded": 10 - WALK_CAP}, replies
    assert len(live_of(env, monkeypatch, "walk-burst")) == WALK_CAP
    server.stop()

    # the byte cap: room for three archives; three expired, three new, one brought back
    size = max(stored_of(env, monkeypatch, "walk-fix"))
    cap = 3 * size + size // 2
    plant_expired(env, monkeypatch, [program(i, "walk-bytes") for i in range(3)])
    server = start_server(**env, BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION=str(cap))
    for i in range(3, 6):
        assert server.send(program(i, "walk-bytes")).type == "buildcontext.created"
    refused = server.send(program(0, "walk-bytes"))
    assert refused.data.get("reason") == "QuotaExceeded", refused
    assert "BUILD_CONTEXT_MAX_BYTES_PER_FUNCTION" in refused.data["message"]
    assert sum(r.size_bytes for r in live_of(env, monkeypatch, "walk-bytes")) <= cap


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_expired_context_sent_again_meets_the_caps_on_every_store(
    start_server: StartServer, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_no_walk_around(start_server, store_env, monkeypatch)


@pytest.mark.oci
def test_an_expired_context_sent_again_meets_the_caps_on_the_oci_store(
    start_server: StartServer,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = registry.docker_config(tmp_path / "docker" / "config.json")
    env = {
        "BUILD_CONTEXT_STORAGE": "oci",
        **registry.function_env(f"walk-{os.urandom(4).hex()}", config),
        "BUILD_CONTEXT_NAMESPACE": "team-a",
    }
    check_no_walk_around(start_server, env, monkeypatch)
