"""The benchmark's floor (bench/floor.py) really does the durable minimum it is measured for:
a reply only after the tar.gz it names is written, and the archive holds the request's source."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import requests

from bench import floor
from bench.workload import request
from tests.support.server import encode


def test_the_floor_writes_the_archive_it_replies_with(tmp_path: Path) -> None:
    sent = request("go", "1KB", salt=3)
    with floor.running(tmp_path) as (url, _pid):
        headers, body = encode(sent.data)
        reply = requests.post(url, data=body, headers=headers, timeout=30)
    assert reply.status_code == 200 and reply.headers["ce-type"] == "buildcontext.created"
    path = Path(reply.json()["path"])
    assert path.parent == tmp_path / "floor"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == reply.json()["archiveSha256"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["Dockerfile", "remediation.go"]
        entry = tar.extractfile("remediation.go")
        assert entry is not None and entry.read().decode() == sent.entry_source


def test_the_second_floor_checks_the_syntax_as_the_function_does(tmp_path: Path) -> None:
    """The checking floor runs the function's own syntax check: a source CPython refuses is
    answered 400 and stored nowhere; a good one is packed as by the first floor."""
    good = request("python", "1KB", salt=5)
    bad = {**good.data, "sourceCode": "def broken(:\n    pass\n"}
    with floor.running(tmp_path, check=True, processes=2) as (url, _pid):
        replies = []
        for data in (bad, good.data):
            headers, body = encode(data)
            replies.append(requests.post(url, data=body, headers=headers, timeout=30))
    refused, stored = replies
    assert refused.status_code == 400 and "syntax error" in refused.json()["message"]
    assert stored.status_code == 200
    assert [p.name for p in (tmp_path / "floor-checked").iterdir()] == [
        Path(stored.json()["path"]).name
    ]
