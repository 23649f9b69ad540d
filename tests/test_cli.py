"""The command line: help, create, send, and the documents generated from the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function.docs import schemas
from function.errors import ConfigurationError
from function.settings import load_settings
from tests.support.cli import run_cli
from tests.support.contexts import EXAMPLES, ROOT, example
from tests.support.seaweed import SeaweedS3
from tests.support.server import FunctionServer, free_port
from tests.support.telemetry import OtlpReceiver


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["create"], ["send"], ["cleanup"], ["settings"], ["schemas"]]
)
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    done = run_cli(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "usage:" in done.stdout


def test_create_from_local_files(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "lib").mkdir(parents=True)
    (source / "remediation.js").write_text("const { f } = require('./lib/f');\nf();\n")
    (source / "lib/f.js").write_text("exports.f = () => 1;\n")
    done = run_cli(
        "create",
        str(source),
        "-f",
        "local-fn",
        "-r",
        "node",
        "-d",
        "ms@^2.1.3",
        "-d",
        "@types/node@^22",
        "-m",
        "incident=INC-9",
        "-o",
        str(tmp_path / "ctx.tar.gz"),
        cwd=tmp_path,
        env={"BUILD_CONTEXT_FS_ROOT": str(tmp_path / "store")},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["files"] == [
        ".dockerignore",
        "Dockerfile",
        "lib/f.js",
        "package.json",
        "remediation.js",
    ]
    assert data["metadata"] == {"incident": "INC-9"}
    assert (tmp_path / "ctx.tar.gz").read_bytes() == Path(data["storage"]["path"]).read_bytes()


def test_create_reports_a_failure_with_exit_code_1(tmp_path: Path) -> None:
    (tmp_path / "remediation.py").write_text("def broken(:\n")
    done = run_cli(
        "create",
        "remediation.py",
        "-f",
        "x",
        cwd=tmp_path,
        env={"BUILD_CONTEXT_FS_ROOT": str(tmp_path / "s")},
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "InvalidSource"


def test_send_prints_the_reply(server: FunctionServer, tmp_path: Path) -> None:
    done = run_cli("send", server.url, "--data", str(EXAMPLES / "go.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Ce-Type: buildcontext.created" in done.stderr
    assert json.loads(done.stdout)["runtime"] == "go"
    done = run_cli(
        "send",
        server.url,
        "--structured",
        stdin='{"lambdaFunction": "x", "runtime": "cobol"}',
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "UnsupportedRuntime"


def test_send_to_a_port_nobody_listens_on_is_one_line_and_exit_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    done = run_cli("send", url, "--data", str(EXAMPLES / "go.json"), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        f"send: no reply from {url!r}: connection refused; is the function running, and the "
        "URL right?"
    ]


@pytest.mark.parametrize("backend", ["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def test_create_writes_what_the_store_holds_in_the_request_namespace(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, otlp: OtlpReceiver
) -> None:
    """`-o` and `--provenance` are read back from the store: from the namespace the request
    names (not the home one), and before the app closes (the reads are traced, like every
    storage call, which a closed app no longer exports)."""
    env = {
        "BUILD_CONTEXT_NAMESPACE": "default",
        "BUILD_CONTEXT_ALLOWED_NAMESPACES": "team-b",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
    }
    if backend == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("bucket")
        env |= {"BUILD_CONTEXT_STORAGE": "s3", **seaweed.function_env(bucket)}
    else:
        env |= {"BUILD_CONTEXT_FS_ROOT": str(tmp_path / "store")}
    (tmp_path / "request.json").write_text(json.dumps({**example("python"), "namespace": "team-b"}))
    outputs = ["-o", "ctx.tar.gz", "--provenance", "ctx.dsse.json"]
    done = run_cli("create", "--request", "request.json", *outputs, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    location, envelope = reply["storage"], reply["provenance"]["envelope"]
    if backend == "s3":
        client = seaweed.client()
        assert "/team-b/" in location["key"], location

        def stored(where: dict[str, str]) -> bytes:
            data: bytes = client.get_object(Bucket=where["bucket"], Key=where["key"])["Body"].read()
            return data
    else:
        assert "/team-b/" in location["path"], location

        def stored(where: dict[str, str]) -> bytes:
            return Path(where["path"]).read_bytes()

    assert (tmp_path / "ctx.tar.gz").read_bytes() == stored(location)
    assert (tmp_path / "ctx.dsse.json").read_bytes() == stored(envelope)
    names = {span.name for span in otlp.spans()}
    assert {"build_context.storage.get", "build_context.storage.get_provenance"} <= names, names


def test_bad_settings_exit_2_naming_the_variable(tmp_path: Path) -> None:
    done = run_cli("create", "x.py", cwd=tmp_path, env={"BUILD_CONTEXT_STORAGE": "floppy"})
    assert done.returncode == 2
    assert "BUILD_CONTEXT_STORAGE" in done.stderr
    done = run_cli(
        "create",
        "missing.py",
        "-f",
        "x",
        cwd=tmp_path,
        env={"BUILD_CONTEXT_FS_ROOT": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "missing.py" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "variable",
    ["BUILD_CONTEXT_PYTHON_IMAGE", "BUILD_CONTEXT_REGISTRY_MIRROR", "BUILD_CONTEXT_S3_PREFIX"],
)
def test_a_bad_setting_is_quoted_shortened(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "/" + "X" * 5000)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    message = str(refused.value)
    assert variable in message and "X" * 60 in message and "X" * 100 not in message


def test_published_schemas_are_generated_from_the_models() -> None:
    folder = ROOT / "config" / "schemas"
    generated = schemas()
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(generated)
    for name, schema in generated.items():
        assert json.loads((folder / name).read_text()) == schema, (
            f"config/schemas/{name} is stale: run `python -m function schemas`"
        )


def test_the_configuration_page_lists_every_setting_as_generated() -> None:
    from function.docs import render

    page = (ROOT / "docs" / "configuration.md").read_text()
    table = page.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == render("markdown"), (
        "docs/configuration.md settings table is stale: paste `python -m function settings --format markdown`"
    )
