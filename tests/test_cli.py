"""The command line: help, create, send, and the documents generated from the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function.docs import schemas
from function.errors import ConfigurationError
from function.settings import load_settings
from tests.support.cli import run_cli
from tests.support.contexts import EXAMPLES, ROOT
from tests.support.server import FunctionServer


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


def test_readme_lists_every_setting_as_generated() -> None:
    from function.docs import render

    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == render("markdown"), (
        "README settings table is stale: paste `python -m function settings --format markdown`"
    )
