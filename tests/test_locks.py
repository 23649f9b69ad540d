"""Locked dependencies: the lock file is checked against the declared dependencies, and the
Dockerfile's own dependency step installs exactly what it pins (pip, npm ci, go), with the
real toolchains; a tampered hash fails the install."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from function import verification
from function.create import CreateService
from function.errors import BuildContextError
from function.settings import Settings
from function.stores import open_store
from tests.conftest import StartServer
from tests.support.contexts import assert_hadolint_passes, example, extract, read_member
from tests.support.locks import go_sum, npm_lock
from tests.test_contexts import _run_dockerfile_steps

H1 = "h1:" + "A" * 43 + "="
SHA = "a" * 64
INTEGRITY = "sha512-" + "B" * 86 + "=="


def service(tmp_path: Path, **settings: Any) -> CreateService:
    loaded = Settings(fs_root=tmp_path / "store", **settings)
    return CreateService(loaded, open_store("filesystem", loaded))


def refused(tmp_path: Path, request: dict[str, Any], **settings: Any) -> BuildContextError:
    with pytest.raises(BuildContextError) as caught:
        service(tmp_path, **settings).build(request, "req-1")
    assert caught.value.reason == "InvalidRequest", caught.value.message
    assert caught.value.errors[0].field == "lockFile", caught.value.errors
    return caught.value


PY = {"lambdaFunction": "locked", "sourceCode": "import tenacity\n"}


@pytest.mark.parametrize(
    ("dependencies", "lock", "problem"),
    [
        (["tenacity>=9"], "tenacity==9.0.0\n", "has no --hash"),
        (["tenacity>=9"], f"tenacity>=9 --hash=sha256:{SHA}\n", "must be pinned with =="),
        (
            ["tenacity>=9"],
            f"--index-url https://evil.example/simple\ntenacity==9.0.0 --hash=sha256:{SHA}\n",
            "is not a requirement",
        ),
        (
            ["tenacity>=9"],
            f"tenacity==9.0.0 --hash=sha256:{SHA} --trusted-host evil\n",
            "only --hash options",
        ),
        (["tenacity>=9", "six"], f"tenacity==9.0.0 --hash=sha256:{SHA}\n", "'six' is not in"),
        (["tenacity<9"], f"tenacity==9.0.0 --hash=sha256:{SHA}\n", "does not admit"),
        (
            ["tenacity"],
            f"tenacity==9.0.0 --hash=sha256:{SHA}\nTenacity==9.0.1 --hash=sha256:{SHA}\n",
            "pinned twice",
        ),
        (["tenacity"], f"tenacity @ https://x.example/t.whl --hash=sha256:{SHA}\n", "pinned"),
    ],
)
def test_python_lock_is_checked(
    tmp_path: Path, dependencies: list[str], lock: str, problem: str
) -> None:
    error = refused(tmp_path, {**PY, "dependencies": dependencies, "lockFile": lock})
    assert problem in error.message


def test_python_lock_renders_hash_checking_mode(tmp_path: Path) -> None:
    lock = (
        "# pip-compile --generate-hashes\n"
        "tenacity==9.0.0 \\\n"
        f"    --hash=sha256:{SHA} \\\n"
        f"    --hash=sha256:{'b' * 64}\n"
        f'six==1.17.0 ; python_version >= "3" --hash=sha256:{"c" * 64}\n'
    )
    built = service(tmp_path).build({**PY, "dependencies": ["tenacity>=9"], "lockFile": lock}, "r")
    assert built.valid.dependencies_locked
    dockerfile = read_member(built.archive.data, "Dockerfile")
    assert "pip install --no-cache-dir --no-compile --require-hashes --no-deps -r" in dockerfile
    requirements = read_member(built.archive.data, "requirements.txt")
    assert f"tenacity==9.0.0 \\\n    --hash=sha256:{SHA} \\\n    --hash=sha256:{'b' * 64}\n" in (
        requirements
    )
    assert 'six==1.17.0; python_version >= "3"' in requirements
    # The provenance records the lock; verify renders requirements.txt from it again.
    verified = verification.verify(built.archive.data, built.envelope, [], allow_unsigned=True)
    external = verified.statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["dependenciesLocked"] is True
    assert [e["name"] for e in external["lock"]["requirements"]] == ["six", "tenacity"]


NODE = {"lambdaFunction": "locked", "runtime": "nodejs", "sourceCode": "require('ms');\n"}


def _npm_lock(**entry: Any) -> dict[str, Any]:
    return {
        "name": "anything",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": "anything", "dependencies": {"ms": "^2.1.3"}},
            "node_modules/ms": {
                "version": "2.1.3",
                "resolved": "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz",
                "integrity": INTEGRITY,
                "license": "MIT",
                **entry,
            },
        },
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"resolved": "git+ssh://git@github.com/evil/ms.git#abc"}, "must be resolved from"),
        ({"resolved": "https://evil.example/ms/-/ms-2.1.3.tgz"}, "must be resolved from"),
        ({"integrity": "sha1-abc="}, "needs a sha512 integrity"),
        ({"version": "2.0.0"}, "outside the declared range"),
        ({"link": True}, "links to local folders"),
        ({"scripts": {"postinstall": "curl evil"}}, "unexpected field 'scripts'"),
    ],
)
def test_npm_lock_is_checked(tmp_path: Path, change: dict[str, Any], problem: str) -> None:
    request = {
        **NODE,
        "dependencies": {"ms": "^2.1.3"},
        "lockFile": json.dumps(_npm_lock(**change)),
    }
    assert problem in refused(tmp_path, request).message


def test_npm_lock_root_must_match_the_dependencies(tmp_path: Path) -> None:
    lock = _npm_lock()
    other = copy.deepcopy(lock)
    other["packages"][""]["dependencies"] = {"ms": "^2.1.3", "left-pad": "^1.3.0"}
    request = {**NODE, "dependencies": {"ms": "^2.1.3"}, "lockFile": json.dumps(other)}
    assert "root dependencies differ" in refused(tmp_path, request).message
    request["lockFile"] = json.dumps({**lock, "lockfileVersion": 1})
    assert "lockfileVersion 2 or 3" in refused(tmp_path, request).message


GO = {"lambdaFunction": "locked", "runtime": "go", **{"sourceCode": example("go")["sourceCode"]}}


@pytest.mark.parametrize(
    ("lock", "problem"),
    [
        (
            f"github.com/google/uuid v1.6.0 {H1}\n",
            "has no line for github.com/google/uuid v1.6.0/go.mod",
        ),
        ("github.com/google/uuid v1.6.0 h1:short=\n", "is not a go.sum line"),
        (f"Evil/Module v1.6.0 {H1}\n", "the module path"),
        (
            f"github.com/google/uuid v1.6.0 {H1}\ngithub.com/google/uuid v1.6.0 h1:{'B' * 43}=\n",
            "two different sums",
        ),
    ],
)
def test_go_sum_is_checked(tmp_path: Path, lock: str, problem: str) -> None:
    request = {**GO, "dependencies": ["github.com/google/uuid@v1.6.0"], "lockFile": lock}
    assert problem in refused(tmp_path, request).message


def test_a_lock_without_dependencies_and_unlocked_dependencies_when_required(
    tmp_path: Path,
) -> None:
    assert "no dependencies to lock" in refused(tmp_path, {**PY, "lockFile": "x==1\n"}).message
    strict = {"require_locked_dependencies": True}
    error = refused(tmp_path, {**PY, "dependencies": ["tenacity"]}, **strict)
    assert "BUILD_CONTEXT_REQUIRE_LOCKED_DEPENDENCIES" in error.message
    # the fix for this runtime, as the runtime describes its lock (not every runtime's)
    assert error.message.endswith("send pip requirements with --hash (python) as lockFile")
    go = refused(tmp_path, {**GO, "dependencies": ["github.com/google/uuid@v1.6.0"]}, **strict)
    assert go.message.endswith("send go.sum (go) as lockFile")
    assert service(tmp_path, **strict).build(PY, "r").valid.dependencies_locked


def test_the_reply_and_the_provenance_say_whether_locked(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    lock = f"tenacity==9.0.0 --hash=sha256:{SHA}\n"
    locked = server.send({**PY, "dependencies": ["tenacity"], "lockFile": lock})
    unlocked = server.send({**PY, "dependencies": ["tenacity"]})
    nothing = server.send(PY)
    assert [r.data["dependenciesLocked"] for r in (locked, unlocked, nothing)] == [
        True,
        False,
        True,
    ]
    strict = start_server(BUILD_CONTEXT_REQUIRE_LOCKED_DEPENDENCIES="true")
    refused_reply = strict.send({**PY, "dependencies": ["tenacity"]})
    assert refused_reply.type == "buildcontext.failed"
    assert refused_reply.data["reason"] == "InvalidRequest"
    assert refused_reply.data["errors"][0]["field"] == "lockFile"


# --- the real toolchains ------------------------------------------------------------------


def _context(tmp_path: Path, request: dict[str, Any], name: str) -> Path:
    built = service(tmp_path).build(request, "req-lock")
    return extract(built.archive.data, tmp_path / name)


def _install(tmp_path: Path, request: dict[str, Any], name: str) -> tuple[Path, Path]:
    context = _context(tmp_path, request, name)
    scratch = tmp_path / f"{name}-scratch"
    scratch.mkdir()
    _run_dockerfile_steps(context, scratch)
    return context, scratch


def _flip(digest: str) -> str:
    return digest[:-3] + ("A" if digest[-3] != "A" else "B") + digest[-2:]


@pytest.mark.slow
def test_pip_installs_exactly_the_locked_files_and_refuses_a_tampered_hash(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels)),
            *("--only-binary=:all:", "tenacity==9.0.0"),
        ],
        check=True,
    )
    digest = hashlib.sha256(next(wheels.glob("*.whl")).read_bytes()).hexdigest()
    request = {**PY, "dependencies": ["tenacity>=9,<10"]}
    lock = f"tenacity==9.0.0 \\\n    --hash=sha256:{digest}\n"
    _, scratch = _install(tmp_path, {**request, "lockFile": lock}, "good")
    done = subprocess.run(
        [str(scratch / "venv/bin/python"), "-c", "import tenacity; print(tenacity.__name__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "tenacity"

    tampered = f"tenacity==9.0.0 \\\n    --hash=sha256:{_flip(digest).lower()}\n"
    with pytest.raises(AssertionError, match="DO NOT MATCH THE HASHES"):
        _install(tmp_path, {**request, "lockFile": tampered}, "tampered")


@pytest.mark.slow
def test_npm_ci_installs_the_lock_and_refuses_a_tampered_integrity(tmp_path: Path) -> None:
    dependencies = {"ms": "^2.1.3"}
    lock = npm_lock(dependencies, tmp_path / "project")  # by npm itself
    request = {
        **NODE,
        "sourceCode": "console.log(JSON.stringify({ ms: require('ms')('2m') }));\n",
        "dependencies": dependencies,
    }
    context, _ = _install(tmp_path, {**request, "lockFile": json.dumps(lock)}, "good")
    assert "npm ci --omit=dev --ignore-scripts" in (context / "Dockerfile").read_text()
    out = subprocess.run(
        ["node", "remediation.js"], cwd=context, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"ms": 120000}

    entry = lock["packages"]["node_modules/ms"]
    entry["integrity"] = _flip(entry["integrity"][:-2]) + "=="
    with pytest.raises(AssertionError, match=r"EINTEGRITY|integrity"):
        _install(tmp_path, {**request, "lockFile": json.dumps(lock)}, "tampered")


@pytest.mark.slow
def test_go_builds_read_only_from_go_sum_and_refuses_a_tampered_sum(tmp_path: Path) -> None:
    module, version = "github.com/google/uuid", "v1.6.0"
    lock = go_sum(module, version, tmp_path / "modules")  # by go mod download
    module_sum = lock.split()[2]
    request = {**GO, "sourceCode": example("go-dependencies")["sourceCode"]}
    request["dependencies"] = [f"{module}@{version}"]
    context, scratch = _install(tmp_path, {**request, "lockFile": lock}, "good")
    assert "GOFLAGS=-mod=readonly" in (context / "Dockerfile").read_text()
    out = subprocess.run(
        [str(scratch / "out/remediation")], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("remediation run ")

    tampered = lock.replace(module_sum, "h1:" + _flip(module_sum[3:-1]) + "=")
    with pytest.raises(AssertionError, match=r"checksum mismatch|SECURITY ERROR"):
        _install(tmp_path, {**request, "lockFile": tampered}, "tampered")


@pytest.mark.parametrize(
    "request_",
    [
        {**PY, "dependencies": ["tenacity"], "lockFile": f"tenacity==9.0.0 --hash=sha256:{SHA}\n"},
        {**NODE, "dependencies": {"ms": "^2.1.3"}, "lockFile": json.dumps(_npm_lock())},
        {
            **GO,
            "dependencies": ["github.com/google/uuid@v1.6.0"],
            "lockFile": f"github.com/google/uuid v1.6.0 {H1}\n"
            f"github.com/google/uuid v1.6.0/go.mod {H1}\n",
        },
    ],
    ids=["python", "nodejs", "go"],
)
def test_locked_dockerfiles_pass_hadolint(tmp_path: Path, request_: dict[str, Any]) -> None:
    context = _context(tmp_path, request_, "ctx")
    assert_hadolint_passes(context)
