"""A server SIGKILLed in the middle of a burst (filesystem store): every context a reply announced
is whole, nothing half-written is visible, and the per-function sizes a process keeps (the caps'
count, function/stores/filesystem_index.py) match the folder, though writers died mid-change.

A process kill, not a power cut: the page cache survives, so this proves the order of the
writes and the renames and the log, not the fsyncs (tests/test_filesystem_store.py spies on
those)."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

from function.stores.filesystem import FilesystemStore
from tests.conftest import StartServer
from tests.support.contexts import example
from tests.support.polling import wait_for
from tests.support.server import Reply, encode

PROGRAMS = 400
NAMES = ("crash-fix", "crash-other")


def program(index: int) -> dict[str, Any]:
    data = {**example("python"), "lambdaFunction": NAMES[index % 2]}
    data["sourceCode"] += f"\n# variant {index}\n"
    return data


def test_a_server_killed_mid_burst_keeps_what_it_announced(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        BUILD_CONTEXT_PROCESSES="2", BUILD_CONTEXT_MAX_CONTEXTS_PER_FUNCTION=str(PROGRAMS)
    )
    root = Path(server.env["BUILD_CONTEXT_FS_ROOT"])
    reader = FilesystemStore(root)  # keeps its sizes from before the burst, then catches up
    namespace = server.send(program(0)).data["storage"]["path"].split("/")[-4]
    assert [len(list(reader.function_sizes(namespace, name))) for name in NAMES] == [1, 0]
    announced: list[dict[str, Any]] = []
    guard = threading.Lock()

    def send(data: dict[str, Any]) -> None:
        headers, body = encode(data)
        try:
            reply = Reply(requests.post(server.url, headers=headers, data=body, timeout=60))
        except requests.RequestException:
            return  # killed before it answered
        if reply.type == "buildcontext.created":
            with guard:
                announced.append(reply.data)

    assert server.process is not None
    supervisor = psutil.Process(server.process.pid)
    with ThreadPoolExecutor(24) as pool:
        for index in range(1, PROGRAMS):
            pool.submit(send, program(index))
        wait_for(lambda: len(announced) >= 30, 60, what="30 replies")
        for process in [*supervisor.children(), supervisor]:
            process.kill()
    assert 30 <= len(announced) < PROGRAMS - 1, "killed mid-burst"

    for data in announced:
        archive = Path(data["storage"]["path"])
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == data["archiveSha256"]
        stored = json.loads((archive.parent / "context.json").read_bytes())
        assert stored["contentHash"] == data["contentHash"]
        assert json.loads((archive.parent / "provenance.dsse.json").read_bytes())["payload"]
    visible = list(FilesystemStore(root).list())
    for item in visible:
        packed = (item.handle / "context.tar.gz").read_bytes()
        assert hashlib.sha256(packed).hexdigest() == item.record.archive_sha256, "half-written"
    assert {d["contentHash"] for d in announced} <= {i.record.content_hash for i in visible}
    for name in NAMES:
        truth = sorted(
            (i.record.content_hash, i.record.size_bytes)
            for i in visible
            if i.record.function == name
        )
        assert sorted(reader.function_sizes(namespace, name)) == truth, name
    reader.close()
