"""Cleanup at scale, per store: `python -m bench.cleanup [--stores s3,oci] [--contexts 5000]
[--rounds 3]`.

For each store, on its test server (SeaweedFS for S3, CNCF Distribution with TLS and basic auth
for OCI; bench/stores.py), in alternating rounds: N/5 and then N expired contexts stored through
the store, then one cleanup run (`CleanupService`, keep-latest off, so that every context goes),
timed with the client's own CPU and the requests it sent. The rate of the larger runs (time per
context) projects a run over 100,000 contexts; the smaller runs show whether that rate holds as
the store grows (flat memory, one listing, pages of bounded size make it linear).

On S3 the rounds also time, at N, the least any cleanup can do on the same server:

- **the floor**: N objects of the same size under another prefix, listed (ListObjectsV2, 1,000
  a page) and deleted with DeleteObjects, 1,000 keys a call. No metadata read, no claim, no
  re-check: it would delete a context being reused.
- **the floor + one HEAD per object**: the same, with each object's metadata read (HEAD, 8 at
  a time) between list and delete: the least a cleanup can do that reads each context's record,
  which S3 keeps only in the object's user metadata (ListObjectsV2 does not return it).

Only the timed part counts, not the filling.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config

from function import archive
from function.cleanup import CleanupService
from function.settings import Settings, load_settings
from function.stores import open_store
from function.stores.base import ContextRecord, Store, utcnow

from . import stores
from .load import Table

FUNCTIONS = 250
NAMESPACE = "bench"
PROJECTED = 100_000


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu: float
    """This process's CPU seconds (the client; the server's are not counted)."""


def fill(name: str, env: dict[str, str], count: int) -> tuple[Store[Any], Settings]:
    """`count` expired contexts through the store, 16 at a time; returns the store."""
    with stores.environment(env):  # the store's credentials too
        settings = load_settings(namespace=NAMESPACE, keep_latest=0)
        store = open_store(env["BUILD_CONTEXT_STORAGE"], settings)
    created = utcnow() - timedelta(days=60)
    salt = uuid.uuid4().hex

    def put(index: int) -> None:
        built = archive.build({"remediation.py": f"# {salt} {index}\n"})
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
    """Counts the requests a store's client sends while `counting` is set: S3 through
    botocore's event hook, the registry client by wrapping its one `request` method."""

    def __init__(self, name: str, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self.counting = False
        self._lock = threading.Lock()
        if name == "s3":
            client.meta.events.register("before-send.s3", self._s3_sent)
        else:
            client.request = self._wrap(client.request)

    def _s3_sent(self, event_name: str = "", **_: Any) -> None:
        self._count(event_name.rsplit(".", 1)[-1])

    def _wrap(self, request: Callable[..., Any]) -> Callable[..., Any]:
        def counted(method: str, path: str, scope: str, **options: Any) -> Any:
            kind = path.rsplit("/", 2)[-2] if "/v2/" in path else "token"
            self._count(f"{method} {kind}")
            return request(method, path, scope, **options)

        return counted

    def _count(self, what: str) -> None:
        if self.counting:
            with self._lock:
                self.counts[what] += 1


def run_function(name: str, env: dict[str, str], count: int, sent: Counter[str]) -> Measured:
    store, settings = fill(name, env, count)
    requests = Requests(name, store.client)  # type: ignore[attr-defined]
    try:
        requests.counting = True
        cpu, started = time.process_time(), time.perf_counter()
        completed = CleanupService([store], settings).run()
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        requests.counting = False
    finally:
        store.close()
    sent.update(requests.counts)
    (summary,) = completed.stores
    if summary.deleted != count or summary.errors:
        raise SystemExit(f"the {name} store's cleanup did not delete all {count}: {summary}")
    return Measured(took, cpu)


def s3_client(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["BUILD_CONTEXT_S3_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, proxies={}),
    )


def run_floor(env: dict[str, str], count: int, sent: Counter[str], heads: bool) -> Measured:
    """The S3 floor; with `heads`, the least a cleanup that reads each object's record can do:
    one HEAD per object (8 at a time) between list and delete."""
    client, bucket = s3_client(env), env["BUILD_CONTEXT_S3_BUCKET"]
    prefix = f"floor-{uuid.uuid4().hex[:8]}/"
    body = archive.build({"remediation.py": "# floor\n"}).data

    def put(index: int) -> None:
        key = f"{prefix}{NAMESPACE}/fn-{index % FUNCTIONS}/{uuid.uuid4().hex}.tar.gz"
        client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"kind": "floor"})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    requests = Requests("s3", client)
    requests.counting = True
    cpu, started = time.process_time(), time.perf_counter()
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
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    requests.counting = False
    sent.update(requests.counts)
    if deleted != count:
        raise SystemExit(f"floor deleted {deleted} of {count}")
    return Measured(took, cpu)


def measure(name: str, sizes: tuple[int, int], rounds: int) -> dict[str, Any]:
    """Every side of one store, `rounds` times in rotating order, on one server."""
    small, large = sizes
    sides: dict[str, Callable[[dict[str, str], Counter[str]], Measured]] = {
        f"{small}": lambda env, sent: run_function(name, env, small, sent),
        f"{large}": lambda env, sent: run_function(name, env, large, sent),
    }
    if name == "s3":
        sides["floor"] = lambda env, sent: run_floor(env, large, sent, heads=False)
        sides["floor + HEAD"] = lambda env, sent: run_floor(env, large, sent, heads=True)
    order = list(sides)
    times: dict[str, list[Measured]] = {side: [] for side in order}
    sent: dict[str, Counter[str]] = {side: Counter() for side in order}
    with stores.opened(name) as (env, _):
        for index in range(rounds):
            for side in order[index % len(order) :] + order[: index % len(order)]:
                times[side].append(sides[side](env, sent[side]))
                print(
                    f"{name} round {index + 1}: {side} {times[side][-1].seconds:.2f} s", flush=True
                )
    return {"times": times, "sent": sent}


def median(values: list[Measured], field: str) -> float:
    return statistics.median(float(getattr(value, field)) for value in values)


def report(name: str, sizes: tuple[int, int], found: dict[str, Any], rounds: int) -> None:
    times, sent = found["times"], found["sent"]
    print(f"\n## Cleanup on the {name} store (median of {rounds} alternating rounds)\n")
    table = Table(["contexts", "seconds", "ms per context", "client CPU ms per context",
                   "requests per context"])  # fmt: skip
    print(table.header())
    for size in sizes:
        taken = times[f"{size}"]
        requests = sum(sent[f"{size}"].values()) / (size * rounds)
        print(
            table.add(
                f"{size:,}",
                f"{median(taken, 'seconds'):.2f}",
                f"{median(taken, 'seconds') / size * 1e3:.2f}",
                f"{median(taken, 'cpu') / size * 1e3:.2f}",
                f"{requests:.3f}",
            )
        )
    small, large = sizes
    rate = median(times[f"{large}"], "seconds") / large
    check = median(times[f"{small}"], "seconds") / small
    projected = rate * PROJECTED
    print(
        f"\n{name}: **{PROJECTED:,} contexts in {projected / 60:.1f} min** at the rate of the "
        f"{large:,}-context runs ({rate * 1e3:.2f} ms each; {check * 1e3:.2f} ms each at "
        f"{small:,}: a rate that does not grow with the store is what makes this projection hold)"
    )
    each = ", ".join(f"{op} {n / (large * rounds):.3f}" for op, n in sent[f"{large}"].most_common())
    print(f"{name}, requests per context by operation at {large:,}: {each}")
    if "floor" in times:
        floor_report(large, times, sent, rounds)


def floor_report(
    large: int, times: dict[str, list[Measured]], sent: dict[str, Counter[str]], rounds: int
) -> None:
    print(f"\n### S3 at {large:,} contexts against its floor\n")
    table = Table(["", "seconds", "ms per context", "ratio", "per round", "requests per context"])
    print(table.header())
    least = median(times["floor"], "seconds")
    for label, side in (
        ("function (claims, re-checks)", f"{large}"),
        ("floor (list + DeleteObjects)", "floor"),
        ("floor + one HEAD per object", "floor + HEAD"),
    ):
        value = median(times[side], "seconds")
        ratios = [t.seconds / f.seconds for t, f in zip(times[side], times["floor"], strict=True)]
        print(
            table.add(
                label,
                f"{value:.2f}",
                f"{value / large * 1e3:.2f}",
                f"{value / least:.2f}x",
                f"{min(ratios):.2f}-{max(ratios):.2f}x",
                f"{sum(sent[side].values()) / (large * rounds):.3f}",
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanup", description=__doc__)
    parser.add_argument(
        "--stores",
        default="s3,oci",
        help="comma-separated, of: s3, oci (basic auth), oci-token (Bearer tokens)",
    )
    parser.add_argument("--contexts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = (max(FUNCTIONS, args.contexts // 5), args.contexts)
    if sizes[0] >= sizes[1]:
        parser.error(f"--contexts must be above {FUNCTIONS} to fit a rate on two sizes")
    names = [n for n in args.stores.split(",") if n]
    if unknown := set(names) - {"s3", "oci", "oci-token"}:
        parser.error(f"unknown stores {sorted(unknown)}; this bench knows s3, oci and oci-token")
    found = {name: measure(name, sizes, args.rounds) for name in names}
    for name in names:
        report(name, sizes, found[name], args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
