"""Which registry client: `python -m bench.oci_client [--contexts 200]`.

Starts the test registry (CNCF Distribution, TLS from a test CA, basic auth) and pushes the
same set of distinct small contexts as single-layer images twice per round, interleaved:

- `requests`: our store (function/stores/oci/client.py), one pooled session, HEAD before
  each blob, monolithic uploads, and the record manifest as well (it does more than oras);
- `requests` alone: the same client doing only what oras does (layer, config, manifest);
- `oras`: oras-py's `OrasClient.push` with the same layer media type, config and annotations
  (it wants files on disk, so each context is written to a temporary folder first).

Prints per-push percentiles, pushes per second and the ratio, per round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from function import archive
from function.archive import Archive
from function.settings import load_settings
from function.stores.base import ContextRecord
from function.stores.oci import ContextImage, OCIStore
from tests.support.registry import Registry


def contexts(count: int, salt: str) -> list[Archive]:
    return [
        archive.build({"remediation.py": f"# {salt} {i}\nprint('fix')\n" + "x = 1\n" * 200})
        for i in range(count)
    ]


def record(built: Archive, function: str) -> ContextRecord:
    return ContextRecord.for_archive(
        built,
        namespace="bench",
        function=function,
        runtime="python",
        runtime_version="3.13",
        created_at=datetime.now(UTC).replace(microsecond=0),
        ttl=timedelta(days=7),
        request_id="bench",
    )


def with_requests(registry: Registry, config: Path, prefix: str) -> Callable[[Archive], None]:
    store = OCIStore.from_settings(
        load_settings(
            storage="oci",
            oci_registry=registry.host,
            oci_repository=prefix,
            oci_docker_config=str(config),
            oci_ca_file=str(registry.ca_path),
        )
    )

    def push(built: Archive) -> None:
        store.put_if_absent(built, record(built, "fix"))

    return push


def with_requests_same_steps(
    registry: Registry, config: Path, prefix: str
) -> Callable[[Archive], None]:
    """Our client doing only what oras does: two blob uploads and the tagged manifest."""
    import hashlib

    from function.stores.oci.client import OCI_MANIFEST

    store = OCIStore.from_settings(
        load_settings(
            storage="oci",
            oci_registry=registry.host,
            oci_repository=prefix,
            oci_docker_config=str(config),
            oci_ca_file=str(registry.ca_path),
        )
    )
    client = store.client
    repository = f"{prefix}/bench/fix"

    def push(built: Archive) -> None:
        image = ContextImage.of(built, record(built, "fix"))
        client.upload_blob(repository, f"sha256:{built.archive_sha256}", built.data)
        config_digest = "sha256:" + hashlib.sha256(image.config).hexdigest()
        client.upload_blob(repository, config_digest, image.config)
        client.put_manifest(repository, built.image_tag, image.manifest, OCI_MANIFEST)

    return push


def with_oras(registry: Registry, prefix: str, workdir: Path) -> Callable[[Archive], None]:
    import json

    import oras.client  # type: ignore[import-untyped]

    client = oras.client.OrasClient(
        hostname=registry.host, tls_verify=str(registry.ca_path), auth_backend="basic"
    )
    client.auth.set_basic_auth(registry.admin.username, registry.admin.password)

    def push(built: Archive) -> None:
        image = ContextImage.of(built, record(built, "fix"))
        manifest = json.loads(image.manifest)
        folder = Path(tempfile.mkdtemp(dir=workdir))
        layer = folder / "context.tar.gz"
        layer.write_bytes(built.data)
        config = folder / "config.json"
        config.write_bytes(image.config)
        cwd = os.getcwd()
        os.chdir(folder)  # oras-py insists that files lie under the working directory
        try:
            client.push(
                target=f"{registry.host}/{prefix}/bench/fix:{built.image_tag}",
                files=[f"context.tar.gz:{manifest['layers'][0]['mediaType']}"],
                manifest_config=f"config.json:{manifest['config']['mediaType']}",
                manifest_annotations=manifest["annotations"],
                quiet=True,
            )
        finally:
            os.chdir(cwd)

    return push


def measure(push: Callable[[Archive], None], batch: list[Archive]) -> list[float]:
    times = []
    for built in batch:
        started = time.perf_counter()
        push(built)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        registry = Registry(workdir / "registry").start()
        try:
            config = registry.docker_config(workdir / "docker" / "config.json")
            print("| round | client | p50 ms | p95 ms | pushes/s |")
            print("| --- | --- | --- | --- | --- |")
            for round_ in range(options.rounds):
                rates = {}
                clients = {
                    "requests (store)": with_requests(registry, config, f"r{round_}"),
                    "requests": with_requests_same_steps(registry, config, f"s{round_}"),
                    "oras": with_oras(registry, f"o{round_}", workdir),
                }
                order = list(clients)[round_ % 3 :] + list(clients)[: round_ % 3]
                for name in order:
                    times = measure(clients[name], contexts(options.contexts, f"{name}{round_}"))
                    rates[name] = len(times) / sum(times)
                    quantiles = statistics.quantiles(times, n=20)
                    print(
                        f"| {round_ + 1} | {name} | {statistics.median(times) * 1e3:.1f} | "
                        f"{quantiles[18] * 1e3:.1f} | {rates[name]:.0f} |"
                    )
                print(f"| {round_ + 1} | ratio requests/oras | | | "
                      f"{rates['requests'] / rates['oras']:.2f}x |")  # fmt: skip
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
