"""Cost of the `sign` stage: `python -m bench.provenance`.

Prints the median time to build the in-toto statement (with every file's sha256) and wrap it
in a DSSE envelope, unsigned and signed with Ed25519 and ECDSA P-256, for 1 KB and 900 KB of
source.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from function import archive as archives
from function import provenance
from function.settings import Settings

from . import workload

ROUNDS = 200


def _keys(folder: Path) -> dict[str, provenance.SigningKey | None]:
    keys: dict[str, provenance.SigningKey | None] = {"unsigned": None}
    for name, key in (
        ("Ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("ECDSA P-256", ec.generate_private_key(ec.SECP256R1())),
    ):
        path = folder / name.replace(" ", "-")
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        keys[name] = provenance.SigningKey.load(path)
    return keys


def main() -> int:
    settings = Settings()
    now = datetime.now(UTC)
    parameters = provenance.BuildParameters(
        recorded={"function": "bench", "runtime": "python", "runtime_version": "3.13"},
        dependencies=(),
        request_id="bench-1",
        request_source="/bench",
    )
    with tempfile.TemporaryDirectory() as folder:
        keys = _keys(Path(folder))
        print("| source | " + " | ".join(keys) + " |")
        print("| --- |" + " --: |" * len(keys))
        for size in ("1KB", "900KB"):
            files = {
                "remediation.py": workload.source("python", workload.SIZES[size], salt=3),
                "Dockerfile": "FROM python:3.13-slim-bookworm\n",
            }
            archive = archives.build(files)
            encoded = {path: text.encode() for path, text in files.items()}
            cells = []
            for key in keys.values():
                times = []
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    statement = provenance.statement(
                        archive,
                        encoded,
                        parameters,
                        provenance.internal_parameters(settings),
                        files["Dockerfile"],
                        now,
                        now,
                    )
                    provenance.envelope(statement, key)
                    times.append(time.perf_counter() - start)
                cells.append(f"{statistics.median(times) * 1e6:,.0f} µs")
            print(f"| {size} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
