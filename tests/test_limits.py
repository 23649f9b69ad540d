"""Limits per caller: the caps per function name hold under 150 concurrent requests, per store.

Every request is a different program for the same function name, sent all at once to the real
server (its default processes and threads); the store is then read back with a second client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from function.settings import load_settings
from function.stores import open_store
from tests.conftest import StartServer
from tests.support.contexts import example
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


def stored_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Sizes of the contexts of `name`, read with a second client on the same storage."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    store = open_store(settings.storage, settings)
    try:
        return [i.record.size_bytes for i in store.list() if i.record.function == name]
    finally:
        store.close()


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
