"""Cleanup on S3 against its floor: `python -m bench.cleanup [--contexts 5000] [--rounds 3]`.

On one SeaweedFS server (tests/support/seaweed.py), in alternating rounds:

- **the function**: N expired contexts stored through the S3 store, then one cleanup run
  (`CleanupService`, keep-latest off so that every context goes, as in the floor), timed;
- **the floor**: N objects of the same size under another prefix, then the least any cleanup
  can do: list them (ListObjectsV2, 1,000 a page) and delete them with DeleteObjects, 1,000 keys
  a call. No metadata read, no claim, no re-check: it would delete a context being reused.
- **the floor + one HEAD per object**: the same, with each object's metadata read (HEAD, 8 at
  a time) between list and delete: the least a cleanup can do that reads each context's record,
  which S3 keeps only in the object's user metadata (ListObjectsV2 does not return it).

The three run in rotating order, each round. Prints the medians, their ratios to the floor (the
goal is 2x or less) and the S3 requests each sent per context. Only the timed part counts, not
the filling.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from function import archive
from function.cleanup import CleanupService
from function.settings import load_settings
from function.stores import open_store
from function.stores.base import ContextRecord, utcnow

from . import stores
from .load import Table

FUNCTIONS = 250
NAMESPACE = "bench"


def fill_function(env: dict[str, str], count: int) -> Any:
    """`count` expired contexts through the store, 16 at a time; returns the store."""
    with stores.environment(env):  # the store's credentials too
        settings = load_settings(namespace=NAMESPACE, keep_latest=0)
        store = open_store("s3", settings)
    created = utcnow() - timedelta(days=60)

    def put(index: int) -> None:
        built = archive.build({"remediation.py": f"# {uuid.uuid4().hex} {index}\n"})
        record = ContextRecord.for_archive(
            built,
            namespace=NAMESPACE,
            function=f"fn-{index % FUNCTIONS}",
            runtime="python",
            runtime_version="3.13",
            created_at=created,
            ttl=timedelta(days=7),
            request_id=f"bench-{index}",
        )
        store.put_if_absent(built, record)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    return store, settings


class Requests:
    """Counts the HTTP requests a client sends while `counting` is set (its event hook)."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self.counting = False
        client.meta.events.register("before-send.s3", self._sent)

    def _sent(self, event_name: str = "", **_: Any) -> None:
        if self.counting:
            self.counts[event_name.rsplit(".", 1)[-1]] += 1


def run_function(env: dict[str, str], count: int, sent: Counter[str]) -> float:
    store, settings = fill_function(env, count)
    requests = Requests(store.client)
    try:
        requests.counting = True
        started = time.perf_counter()
        completed = CleanupService([store], settings).run()
        took = time.perf_counter() - started
        requests.counting = False
    finally:
        store.close()
    sent.update(requests.counts)
    (summary,) = completed.stores
    if summary.deleted != count or summary.errors:
        raise SystemExit(f"the function's cleanup did not delete all {count}: {summary}")
    return took


def run_floor(
    client: Any, bucket: str, count: int, sent: Counter[str], heads: bool = False
) -> float:
    """The floor; with `heads`, the least a cleanup that reads each object's record can do:
    one HEAD per object (8 at a time, as the store's listing does) between list and delete."""
    prefix = f"floor-{uuid.uuid4().hex[:8]}/"
    body = archive.build({"remediation.py": "# floor\n"}).data

    def put(index: int) -> None:
        key = f"{prefix}{NAMESPACE}/fn-{index % FUNCTIONS}/{uuid.uuid4().hex}.tar.gz"
        client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"kind": "floor"})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    requests = Requests(client)
    requests.counting = True
    started = time.perf_counter()
    deleted = 0
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
    )
    for page in pages:
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if heads:
            with ThreadPoolExecutor(8) as readers:
                records = list(
                    readers.map(lambda k: client.head_object(Bucket=bucket, **k)["Metadata"], keys)
                )
            keys = [k for k, r in zip(keys, records, strict=True) if r.get("kind") == "floor"]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            reply = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                raise SystemExit(f"floor: DeleteObjects failed: {reply['Errors'][:1]}")
            deleted += len(batch)
    took = time.perf_counter() - started
    requests.counting = False
    sent.update(requests.counts)
    if deleted != count:
        raise SystemExit(f"floor deleted {deleted} of {count}")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanup", description=__doc__)
    parser.add_argument("--contexts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from tests.support.seaweed import start_seaweed_s3

    seaweed = start_seaweed_s3()
    try:
        bucket = "bench"
        client = seaweed.client()
        client.create_bucket(Bucket=bucket)
        env = {"BUILD_CONTEXT_STORAGE": "s3", **seaweed.function_env(bucket)}
        sides = ["function", "floor", "floor + HEAD"]
        times: dict[str, list[float]] = {who: [] for who in sides}
        sent: dict[str, Counter[str]] = {who: Counter() for who in sides}
        for index in range(args.rounds):
            order = sides[index % 3 :] + sides[: index % 3]
            for who in order:
                took = (
                    run_function(env, args.contexts, sent[who])
                    if who == "function"
                    else run_floor(
                        seaweed.client(), bucket, args.contexts, sent[who], who != "floor"
                    )
                )
                times[who].append(took)
                print(f"round {index + 1}: {who} {took:.2f} s", flush=True)
    finally:
        seaweed.stop()
    print(
        f"\n## Cleanup of {args.contexts:,} S3 contexts on SeaweedFS against the floor "
        f"(median of {args.rounds} alternating rounds)\n"
    )
    table = Table(["", "seconds", "ms per context", "ratio", "per round", "requests per context"])
    print(table.header())
    least = statistics.median(times["floor"])
    total = args.contexts * args.rounds
    for name, who in (
        ("function (claims, re-checks)", "function"),
        ("floor (list + DeleteObjects)", "floor"),
        ("floor + one HEAD per object", "floor + HEAD"),
    ):
        value = statistics.median(times[who])
        rounds = [t / f for t, f in zip(times[who], times["floor"], strict=True)]
        per = sum(sent[who].values()) / total
        print(
            table.add(
                name,
                f"{value:.2f}",
                f"{value / args.contexts * 1e3:.2f}",
                f"{value / least:.2f}x",
                f"{min(rounds):.2f}-{max(rounds):.2f}x",
                f"{per:.3f}",
            )
        )
    for who, counts in sent.items():
        each = ", ".join(f"{op} {n / total:.3f}" for op, n in counts.most_common())
        print(f"\n{who}, requests per context by operation: {each}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
