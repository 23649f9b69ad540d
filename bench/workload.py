"""Requests for the benchmark and the load test: valid source of a chosen size per runtime.

The source is code-like text with identifiers and numbers that vary by line, so it compresses
about as well as real code (4-5x with gzip -6), not like a run of one repeated character.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

RUNTIMES = ("python", "nodejs", "go")
KB = 1024
SIZES = {"1KB": 1 * KB, "10KB": 10 * KB, "100KB": 100 * KB, "900KB": 900 * KB}
MIX = (("1KB", 50), ("10KB", 30), ("100KB", 15), ("900KB", 5))
"""Share of each source size in a mixed workload, in percent: mostly small remediations."""

_DEPENDENCIES = {
    "python": ["requests>=2.31", "kubernetes==31.0.0"],
    "nodejs": {"@kubernetes/client-node": "^1.0.0"},
    "go": [],
}


_STEP = {
    "python": (
        "def step_{salt:x}_{index}(value):\n"
        '    """Step {index} of plan {salt:x}: scale by {scale}."""\n'
        "    total = value * {factor} + {offset}\n"
        '    return {{"step": {index}, "total": total, "label": "s{label:08x}"}}\n\n\n'
    ),
    "nodejs": (
        "function step_{salt:x}_{index}(value) {{\n"
        "  // Step {index} of plan {salt:x}: scale by {scale}.\n"
        "  const total = value * {factor} + {offset};\n"
        '  return {{ step: {index}, total, label: "s{label:08x}" }};\n'
        "}}\n\n"
    ),
    "go": (
        "// step_{salt:x}_{index} is step {index} of plan {salt:x}: scale by {scale}.\n"
        "func step_{salt:x}_{index}(value int) (int, string) {{\n"
        "\ttotal := value*{factor} + {offset}\n"
        '\treturn total, "s{label:08x}"\n'
        "}}\n\n"
    ),
}
"""One function of the generated source per runtime; its numbers come from `_step`."""


def _step(runtime: str, index: int, salt: int, rng: random.Random) -> str:
    return _STEP[runtime].format(
        index=index,
        salt=salt,
        scale=rng.randint(2, 999),
        factor=rng.randint(2, 99999),
        offset=rng.randint(0, 99999),
        label=rng.getrandbits(32),
    )


_HEAD = {
    "python": '"""Generated remediation for load tests."""\n\nimport json\n\n\n',
    "nodejs": '"use strict";\n// Generated remediation for load tests.\n\n',
    "go": 'package main\n\nimport "fmt"\n\n',
}
_TAIL = {
    "python": 'if __name__ == "__main__":\n    print(json.dumps(step_{salt:x}_0(1)))\n',
    "nodejs": "console.log(JSON.stringify(step_{salt:x}_0(1)));\n",
    "go": "func main() {{\n\tfmt.Println(step_{salt:x}_0(1))\n}}\n",
}


def source(runtime: str, size: int, salt: int) -> str:
    """Entry-file source of about `size` bytes (never more); `salt` makes it unique."""
    rng = random.Random(salt)
    head, tail = _HEAD[runtime], _TAIL[runtime].format(salt=salt)
    parts = [head]
    length = len(head) + len(tail)
    index = 0
    while True:
        step = _step(runtime, index, salt, rng)
        if length + len(step) > size and index > 0:
            break
        parts.append(step)
        length += len(step)
        index += 1
    parts.append(tail)
    return "".join(parts)


@dataclass(frozen=True)
class Request:
    """One request's event data, and what the reply must show for it."""

    data: dict[str, Any]
    runtime: str
    size: str
    key: str
    """Equal keys mean identical requests: they must end as one stored context."""

    @property
    def entry_source(self) -> str:
        return str(self.data["sourceCode"])


def request(runtime: str, size: str, salt: int) -> Request:
    data = {
        "lambdaFunction": f"load-{runtime}-{salt % 97}",
        "runtime": runtime,
        "sourceCode": source(runtime, SIZES[size], salt),
        "dependencies": _DEPENDENCIES[runtime],
        "ttlSeconds": 3600,
        "metadata": {"workload": "bench", "size": size},
    }
    return Request(data, runtime, size, key=f"{runtime}-{size}-{salt}")


def mixed(count: int, seed: int = 1, identical_every: int = 0) -> list[Request]:
    """`count` requests, runtimes in turn and sizes by `MIX`; with `identical_every` = n, every
    n-th request repeats an earlier one (same data), so stores see concurrent duplicates."""
    rng = random.Random(seed)
    sizes = [size for size, weight in MIX for _ in range(weight)]
    requests: list[Request] = []
    for index in range(count):
        if identical_every and index % identical_every == identical_every - 1 and requests:
            requests.append(rng.choice(requests[-identical_every:]))
            continue
        runtime = RUNTIMES[index % len(RUNTIMES)]
        requests.append(request(runtime, rng.choice(sizes), seed * 1_000_003 + index))
    return requests
