"""What the per-function caps cost: `python -m bench.limits [--stores filesystem,s3] [--quick]`.

In-process, one request at a time: new contexts for one function name, with the caps off
(`BUILD_CONTEXT_MAX_*_PER_FUNCTION=0`) and on, while the namespace already holds N contexts of
other names (the count must read only this name's contexts, whatever else is stored). Prints
the median and p95 of one create, and the on/off ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence

from bench import stores
from bench.load import percentiles
from function.create import CreateService
from function.settings import load_settings
from function.stores import open_store

PROGRAM = "import sys\n\n\ndef main():\n    print('ok')\n\n\nmain()\n# {}\n"


def request(name: str, index: int) -> dict[str, object]:
    return {"lambdaFunction": name, "runtime": "python", "sourceCode": PROGRAM.format(index)}


def run(names: Sequence[str], background: Sequence[int], count: int) -> None:
    print(f"\n## One create with the per-function caps off and on (ms; {count} new contexts)\n")
    print(
        "| store | other contexts in the namespace | caps off p50 | p95 | caps on p50 | p95 | on/off p50 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        with stores.opened(name) as (env, _), stores.environment(env):
            settings = load_settings()
            store = open_store(settings.storage, settings)
            filler = CreateService(load_settings(max_contexts_per_function=0), store)
            stored = 0
            for others in background:
                while stored < others:
                    filler.run(request(f"other-{stored % 97}", stored), str(uuid.uuid4()))
                    stored += 1
                timings: dict[str, list[float]] = {}
                for caps, overrides in (
                    ("off", {"max_contexts_per_function": 0, "max_bytes_per_function": 0}),
                    ("on", {"max_contexts_per_function": count * 4}),
                ):
                    service = CreateService(load_settings(**overrides), store)
                    fn = f"bench-{caps}-{uuid.uuid4().hex[:6]}"
                    samples = []
                    for i in range(count):
                        start = time.perf_counter()
                        service.run(request(fn, i), str(uuid.uuid4()))
                        samples.append(time.perf_counter() - start)
                    timings[caps] = samples
                off, on = percentiles(timings["off"]), percentiles(timings["on"])
                print(
                    f"| {name} | {others} | {off[0] * 1000:.1f} | {off[1] * 1000:.1f} | "
                    f"{on[0] * 1000:.1f} | {on[1] * 1000:.1f} | {on[0] / off[0]:.2f} |",
                    flush=True,
                )
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default="filesystem,s3")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    background = [0, 200] if args.quick else [0, 200, 1000]
    run(args.stores.split(","), background, 20 if args.quick else 40)


if __name__ == "__main__":
    main()
