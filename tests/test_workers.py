"""Several server processes on one port (BUILD_CONTEXT_PROCESSES): the real supervisor and
workers, over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from function.settings import load_settings
from function.workers import usable_cpus
from tests.conftest import StartServer
from tests.support.contexts import example
from tests.support.polling import wait_for
from tests.support.server import FunctionServer, Reply
from tests.support.telemetry import scrape


def workers_of(server: FunctionServer) -> list[psutil.Process]:
    assert server.process is not None
    return psutil.Process(server.process.pid).children()


def send_apart(server: FunctionServer, count: int) -> list[Reply]:
    """`count` different requests at once, each on its own connection, so that both workers
    take some."""

    def one(index: int) -> Reply:
        request = example("python")
        request["lambdaFunction"] = f"spread-{index}"
        return FunctionServer.send(server, request)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_processes_share_the_port_and_every_scrape_counts_all_of_them(
    start_server: StartServer,
) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES="2")
    assert len(workers_of(server)) == 2
    replies = send_apart(server, 24)
    assert [r.type for r in replies] == ["buildcontext.created"] * 24, replies[:3]
    answered_by = {
        line.get("worker")
        for line in server.log_lines()
        if line["message"] == "buildcontext.created"
    }
    assert answered_by <= {0, 1} and answered_by, answered_by
    for _ in range(10):  # new connections: the scrape lands on either worker
        metrics = scrape(server, prefix="").per_label("worker")
        assert set(metrics["process_resident_memory_bytes"]) == {"0", "1"}
        assert sum(metrics["build_context_requests_total"].values()) == 24
        assert set(metrics["build_context_requests_total"]) == {str(w) for w in answered_by}


def test_one_process_has_no_worker_label(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES="1")
    assert workers_of(server) == []
    assert server.send(example("go")).type == "buildcontext.created"
    metrics = scrape(server, prefix="").per_label("worker")
    assert metrics["build_context_requests_total"] == {"": 1.0}


def test_a_worker_that_dies_is_replaced_and_the_port_keeps_answering(
    start_server: StartServer,
) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES="2")
    victim, survivor = workers_of(server)
    victim.kill()
    wait_for(
        lambda: (
            len(workers_of(server)) == 2 and victim.pid not in {p.pid for p in workers_of(server)}
        )
    )
    assert survivor.pid in {p.pid for p in workers_of(server)}
    replies = send_apart(server, 12)
    assert [r.type for r in replies] == ["buildcontext.created"] * 12
    exited = [line for line in server.log_lines() if line["message"] == "worker exited"]
    assert [(line["pid"], line["exitCode"]) for line in exited] == [(victim.pid, -signal.SIGKILL)]
    wait_for(
        lambda: (
            set(scrape(server, prefix="").per_label("worker")["process_resident_memory_bytes"])
            == {"0", "1"}
        )
    )


def test_a_worker_that_cannot_start_stops_the_server_with_its_reason(tmp_path: Path) -> None:
    server = FunctionServer(
        {
            "BUILD_CONTEXT_PROCESSES": "2",
            "BUILD_CONTEXT_STORAGE": "configmap",
            "BUILD_CONTEXT_NAMESPACE": "default",
            "KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
            "KUBERNETES_SERVICE_HOST": "",
        },
        tmp_path,
    )
    with pytest.raises(RuntimeError, match="server exited 1") as failure:
        server.start(timeout=30)
    assert "worker failed" in str(failure.value)
    assert "a worker cannot start" in str(failure.value)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_drains_every_worker(start_server: StartServer, processes: str) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES=processes)
    send_apart(server, 4)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    stopping = [line for line in server.log_lines() if line["message"] == "stopping"]
    assert len(stopping) == int(processes)
    assert all(line["drained"] is True for line in stopping)
    # every socket is closed on the event loop that polls it: no thread dies on a closed one
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_workers_stop_when_the_supervisor_is_killed(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES="2")
    workers = workers_of(server)
    assert server.process is not None
    server.process.kill()
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == [], "workers outlived their supervisor"
    noticed = [line for line in server.log_lines() if "supervisor is gone" in line["message"]]
    assert sorted(line["worker"] for line in noticed) == [0, 1]


def test_usable_cpus_follows_affinity_and_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one process
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{affinity * 100000 + 1} 100000\n")  # above the CPUs we may run on
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "absent") == affinity
    pinned = subprocess.run(
        [sys.executable, "-c", "from function.workers import usable_cpus; print(usable_cpus())"],
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert pinned.stdout.strip() == "1"


def test_the_default_is_two_processes_per_cpu_up_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    from function import workers

    for cpus, expected in ((1, 2), (2, 4), (16, 4)):
        monkeypatch.setattr(workers, "usable_cpus", lambda cpus=cpus: cpus)
        assert workers.process_count(load_settings()) == expected
    assert workers.process_count(load_settings(), cpus=1) == 2  # a pod's CPU limit of one
    monkeypatch.setattr(workers, "usable_cpus", lambda: 16)
    assert workers.process_count(load_settings(processes=6)) == 6


def test_the_default_threads_follow_the_store() -> None:
    """Short fsyncs: few threads per process; a store on the network: more requests waiting."""
    assert load_settings(storage="filesystem").server_threads == 2
    network = {"s3_bucket": "b", "oci_registry": "registry.example.com"}
    for storage in ("configmap", "s3", "oci"):
        assert load_settings(storage=storage, **network).server_threads == 4
    assert load_settings(storage="s3", threads=16, **network).server_threads == 16
    assert load_settings(threads=1).server_threads == 1


def test_a_worker_stuck_past_the_grace_period_is_killed(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_PROCESSES="2", BUILD_CONTEXT_SHUTDOWN_GRACE_SECONDS="0")
    stuck, _ = workers_of(server)
    stuck.suspend()  # SIGSTOP: it cannot act on SIGTERM
    assert server.process is not None
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 1
    assert 10 <= time.monotonic() - signalled < 25
    killed = [
        line
        for line in server.log_lines()
        if line["message"] == "killing a worker that did not stop"
    ]
    assert [line["pid"] for line in killed] == [stuck.pid]


@pytest.mark.parametrize("sibling", ["answers", "cut short", "absent"])
def test_a_scrape_merges_what_siblings_answer_and_skips_what_they_cannot(
    tmp_path: Path, sibling: str
) -> None:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.openmetrics.exposition import generate_latest

    from function.workers import SharedMetrics, Worker

    def registry_counting(value: float) -> CollectorRegistry:
        registry = CollectorRegistry()
        Counter("requests", "Requests.", registry=registry).inc(value)
        return registry

    worker = Worker(index=0, count=2, folder=tmp_path, supervisor=os.getppid())
    answer = generate_latest(registry_counting(5))  # type: ignore[no-untyped-call]
    replies = {"answers": answer, "cut short": answer[: len(answer) // 2]}
    peer = None
    if sibling in replies:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.bind(str(worker.metrics_socket(1)))
        peer.listen()

        def answer_once() -> None:
            connection, _ = peer.accept()
            with connection:
                connection.sendall(replies[sibling])

        threading.Thread(target=answer_once, daemon=True).start()
    shared = SharedMetrics(registry_counting(2), worker)
    try:
        samples = {
            sample.labels["worker"]: sample.value
            for family in shared.collect()
            if family.name == "requests"
            for sample in family.samples
            if sample.name == "requests_total"
        }
    finally:
        shared.close()
        if peer is not None:
            peer.close()
    assert samples == ({"0": 2.0, "1": 5.0} if sibling == "answers" else {"0": 2.0})


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_stops_start_up_naming_port(tmp_path: Path, processes: str) -> None:
    server = FunctionServer({"BUILD_CONTEXT_PROCESSES": processes}, tmp_path)
    with (
        socket.socket() as squatter,
        pytest.raises(RuntimeError, match="server exited 2") as failure,
    ):
        squatter.bind(("127.0.0.1", server.port))  # bound, not listening: probes are refused
        server.start(timeout=30)
    assert f"PORT: cannot listen on 127.0.0.1:{server.port} (Address already in use)" in str(
        failure.value
    )
    assert "Traceback" not in str(failure.value)


def test_a_host_that_does_not_resolve_stops_start_up_naming_it(tmp_path: Path) -> None:
    server = FunctionServer({"BUILD_CONTEXT_HOST": "no-such-host.invalid"}, tmp_path)
    with pytest.raises(RuntimeError, match="server exited 2") as failure:
        server.start(timeout=30)
    assert "BUILD_CONTEXT_HOST: cannot resolve 'no-such-host.invalid'" in str(failure.value)
