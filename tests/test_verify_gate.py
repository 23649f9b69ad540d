"""The builder's gate, `python -m function verify`, run as the init container runs it (a child
process): what whoever can write to the store may try, and the one line and exit code each
earns (docs/deploy.md, Exit codes of verify).

Forged contexts are signed here with the trusted key as well as left unsigned: the entry
checks hold in every mode, not only when a signature is missing.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from function import archive as archives
from function import provenance
from function.create import Built
from function.refusals import exit_codes
from tests.conftest import StartServer
from tests.support.cli import run_cli
from tests.support.contexts import ROOT, example
from tests.support.registry import Registry
from tests.test_provenance import build, statement_of, verify_cli, write_key

Entry = Callable[[tarfile.TarFile], None]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_key(tmp_path_factory.mktemp("keys"), "ed25519")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Built:
    return build(tmp_path_factory.mktemp("base"), example("python"), keys[0])


def files_of(built: Built) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(built.archive.data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def forge(
    built: Built, tar: bytes, key: Path | None, archive: bytes | None = None
) -> tuple[bytes, bytes]:
    """A context as someone with write access to the store makes it: any tar, and a statement
    whose subjects and file digests match it, signed with `key` (or unsigned)."""
    archive = archives.gzip_bytes(tar) if archive is None else archive
    body = statement_of(built.envelope)
    body["subject"] = [
        {"name": "context.tar.gz", "digest": {"sha256": hashlib.sha256(archive).hexdigest()}},
        {"name": "context.tar", "digest": {"sha256": hashlib.sha256(tar).hexdigest()}},
    ]
    digests: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
            for member in opened:
                if member.isfile():
                    data = opened.extractfile(member).read()  # type: ignore[union-attr]
                    digests[member.name] = {"sha256": hashlib.sha256(data).hexdigest()}
    except tarfile.TarError:
        pass
    body["predicate"]["buildDefinition"]["externalParameters"]["files"] = digests
    signer = provenance.SigningKey.load(key) if key else None
    return archive, provenance.envelope(body, signer)


def tar_with(
    built: Built,
    *extra: Entry,
    fmt: int = tarfile.USTAR_FORMAT,
    names: dict[str, bytes] | None = None,
) -> bytes:
    """The context's own entries (or `names`) in canonical order, then `extra` entries."""
    files = files_of(built) if names is None else names
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), archives.MTIME, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
        for add in extra:
            add(tar)
    return buffer.getvalue()


def packed(built: Built, extra: dict[str, bytes]) -> bytes:
    """The context's files and `extra` packed as build-context packed them before it refused
    such names: the canonical layout (parents as folder entries), so only a check of the
    names themselves can tell."""
    files = {**files_of(built), **extra}
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    return archives._tarfile_tar(files, sorted([*folders, *files]))


def regular(name: str, data: bytes = b"echo owned\n", pax: dict[str, str] | None = None) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), archives.MTIME, 0o644
        info.pax_headers = pax or {}
        tar.addfile(info, io.BytesIO(data))

    return add


def special(name: str, kind: bytes, target: str = "") -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mtime = kind, target, archives.MTIME
        tar.addfile(info)

    return add


def run_verify(
    tmp_path: Path, archive: bytes, envelope: bytes, public: Path | None, *extra: str
) -> Any:
    args = ["--public-key", str(public)] if public else ["--allow-unsigned"]
    output = tmp_path / "out.tar.gz"
    output.unlink(missing_ok=True)
    done = verify_cli(
        archive, envelope, [], tmp_path, *args, "--output", str(output), *extra, pin=False
    )
    done.wrote_output = output.exists()  # type: ignore[attr-defined]
    return done


def refused(done: Any, code: int, *words: str) -> None:
    """Refused with `code` and exactly one line on stderr, nothing written for the builder."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("verify: REFUSED"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not done.wrote_output
    assert done.stdout == ""


# `packed` ones are in the canonical layout, which verify accepted before it checked names
# (exit 0 and the archive written for the builder: dotdot, absolute, dotdot-inside, dot-slash,
# case, file-under-file); the others are not canonical or not files, refused before, exit 1.
UNSAFE = [
    pytest.param(lambda b: packed(b, {"../evil.sh": b"x"}), "'..'", id="dotdot"),
    pytest.param(lambda b: packed(b, {"/etc/cron.d/evil": b"x"}), "is empty", id="absolute"),
    pytest.param(lambda b: packed(b, {"a/../../evil": b"x"}), "not normalised", id="dotdot-inside"),
    pytest.param(lambda b: packed(b, {"./evil.sh": b"x"}), "'.'", id="dot-slash"),
    pytest.param(lambda b: packed(b, {"lib//evil.py": b"x"}), "not normalised", id="double-slash"),
    pytest.param(
        lambda b: tar_with(b, special("evil", tarfile.SYMTYPE, "/etc/passwd")),
        "symbolic link",
        id="symlink",
    ),
    pytest.param(
        lambda b: tar_with(b, special("evil", tarfile.LNKTYPE, "Dockerfile")),
        "hard link",
        id="hardlink",
    ),
    pytest.param(
        lambda b: tar_with(b, special("evil", tarfile.CHRTYPE)), "character device", id="chardev"
    ),
    pytest.param(
        lambda b: tar_with(b, special("evil", tarfile.BLKTYPE)), "block device", id="blockdev"
    ),
    pytest.param(lambda b: tar_with(b, special("evil", tarfile.FIFOTYPE)), "FIFO", id="fifo"),
    pytest.param(
        lambda b: tar_with(b, regular("remediation.py", b"import os\n")),
        "the same name twice",
        id="twice",
    ),
    pytest.param(
        lambda b: packed(b, {"Remediation.py": b"import os\n"}),
        "case-insensitive",
        id="case",
    ),
    pytest.param(
        lambda b: packed(b, {"Dockerfile/x.py": b"x"}),
        "'Dockerfile'",
        id="file-under-file",
    ),
    pytest.param(
        lambda b: tar_with(
            b, regular("notes.txt", pax={"path": "../evil.sh"}), fmt=tarfile.PAX_FORMAT
        ),
        "pax or GNU header",
        id="pax-rename",
    ),
    pytest.param(
        lambda b: tar_with(b, regular("a" * 120), fmt=tarfile.GNU_FORMAT),
        "pax or GNU header",
        id="gnu-longname",
    ),
]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize(("tar", "words"), UNSAFE)
def test_unsafe_or_ambiguous_entries_are_refused_in_every_mode(
    tmp_path: Path,
    base: Built,
    keys: tuple[Path, Path],
    tar: Callable[[Built], bytes],
    words: str,
    signed: bool,
) -> None:
    archive, envelope = forge(base, tar(base), keys[0] if signed else None)
    done = run_verify(
        tmp_path,
        archive,
        envelope,
        keys[1] if signed else None,
        "--expect-archive-sha256",
        hashlib.sha256(archive).hexdigest(),
    )
    refused(done, 7, words)


def _nested(depth: int) -> bytes:
    return b'{"payloadType": ' + b"[" * depth + b"]" * depth + b"}"


def _envelope_with(base: Built, **fields: Any) -> bytes:
    envelope = json.loads(base.envelope)
    envelope.update(fields)
    return json.dumps(envelope).encode()


def _statement_changed(base: Built, change: Callable[[dict[str, Any]], Any]) -> bytes:
    body = statement_of(base.envelope)
    change(body)
    return provenance.envelope(body, None)


def _external(body: dict[str, Any]) -> dict[str, Any]:
    external: dict[str, Any] = body["predicate"]["buildDefinition"]["externalParameters"]
    return external


def _images(body: dict[str, Any]) -> dict[str, Any]:
    images: dict[str, Any] = body["predicate"]["buildDefinition"]["internalParameters"]["images"]
    return images


def test_a_statement_made_before_a_runtime_was_added_still_verifies(
    tmp_path: Path, base: Built
) -> None:
    """A statement records the image templates of every runtime registered when it was made;
    only its own runtime's shape its Dockerfile, so one without the others' still verifies."""

    def older(body: dict[str, Any]) -> None:
        for key in ("nodejs", "go_build", "go_runtime"):
            del _images(body)[key]

    envelope = _statement_changed(base, older)
    done = run_verify(tmp_path, base.archive.data, envelope, None, "--unpinned")
    assert done.returncode == 0, done.stderr
    assert done.wrote_output


MALFORMED_ENVELOPES = [
    pytest.param(lambda b: b"\x00\xff not json", "not UTF-8 JSON", id="not-json"),
    pytest.param(lambda b: _nested(200_000), "nests too deeply", id="deep"),
    pytest.param(
        lambda b: b'{"payloadType": "x", "payloadType": "y"}', "twice", id="duplicate-key"
    ),
    pytest.param(lambda b: b"[]", "the envelope", id="a-list"),
    pytest.param(
        lambda b: _envelope_with(b, signatures={"sig": "x"}), "signatures", id="signatures-object"
    ),
    pytest.param(lambda b: _envelope_with(b, payload=12), "payload", id="payload-number"),
    pytest.param(lambda b: _envelope_with(b, payload="%%%"), "not base64", id="payload-not-base64"),
    pytest.param(
        lambda b: _envelope_with(b, payload="\u00e9"), "not base64", id="payload-not-ascii"
    ),
    pytest.param(
        lambda b: _envelope_with(b, payloadType="text/plain"), "payloadType", id="payload-type"
    ),
    pytest.param(
        lambda b: _envelope_with(b, signatures=[{"keyid": 1, "sig": "AA=="}]),
        "keyid",
        id="keyid-number",
    ),
    pytest.param(lambda b: b"NaN", "NaN", id="nan"),
]


@pytest.mark.parametrize(("envelope", "words"), MALFORMED_ENVELOPES)
def test_a_malformed_envelope_is_one_line_and_exit_3(
    tmp_path: Path,
    base: Built,
    keys: tuple[Path, Path],
    envelope: Callable[[Built], bytes],
    words: str,
) -> None:
    done = run_verify(tmp_path, base.archive.data, envelope(base), keys[1], "--unpinned")
    refused(done, 3, words)


MALFORMED_STATEMENTS = [
    pytest.param(
        lambda b: _statement_changed(b, lambda s: _external(s).update(files=[])),
        "files",
        id="files-list",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: _external(s).update(function=7)),
        "function",
        id="function-number",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: _external(s).update(dependencies=[["a"]])),
        "dependencies",
        id="pair-of-one",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: s.update(subject="x")),
        "subject",
        id="subject-string",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: s["subject"][0]["digest"].update(sha256=1)),
        "sha256",
        id="digest-number",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: s.update(predicate=None)),
        "predicate",
        id="predicate-null",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: s.update(_type="x")),
        "in-toto Statement",
        id="type",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: s.update(subject=s["subject"] * 2)),
        "once",
        id="subject-twice",
    ),
    pytest.param(
        lambda b: _statement_changed(
            b, lambda s: _external(s).update(lock={"requirements": [{"name": 5}]})
        ),
        "cannot render",
        id="lock-of-wrong-types",
    ),
    pytest.param(
        lambda b: provenance.envelope({"x": json.loads("[" * 50 + "]" * 50)}, None),
        "_type",
        id="not-a-statement",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: _images(s).pop("python")),
        "internalParameters.images must name every base image of the runtime (python)",
        id="without-its-runtimes-image",
    ),
    pytest.param(
        lambda b: _statement_changed(b, lambda s: _images(s).update(java="eclipse-temurin")),
        "and no other than python, nodejs, go_build, go_runtime",
        id="an-image-we-do-not-have",
    ),
    pytest.param(
        lambda b: _envelope_with(
            b, signatures=[], payload=base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
        ),
        "nests too deeply",
        id="deep",
    ),
]


@pytest.mark.parametrize(("envelope", "words"), MALFORMED_STATEMENTS)
def test_a_malformed_statement_is_one_line_and_exit_5(
    tmp_path: Path, base: Built, envelope: Callable[[Built], bytes], words: str
) -> None:
    done = run_verify(tmp_path, base.archive.data, envelope(base), None, "--unpinned")
    refused(done, 5, words)


def _gzip_bomb() -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1024 * 1024)
    return b"".join(deflate.compress(chunk) for _ in range(300)) + deflate.flush()


MALFORMED_ARCHIVES = [
    pytest.param(lambda b: b"this is not gzip", "not gzip", id="not-gzip"),
    pytest.param(lambda b: b.archive.data[: len(b.archive.data) // 2], "truncated", id="truncated"),
    pytest.param(
        lambda b: b.archive.data + gzip.compress(b"more"), "after its gzip", id="two-members"
    ),
    pytest.param(lambda b: _gzip_bomb(), "unpacks to more than", id="bomb"),
    pytest.param(lambda b: archives.gzip_bytes(b"\x01" * 2048), "not a tar", id="not-a-tar"),
]


@pytest.mark.parametrize(("archive", "words"), MALFORMED_ARCHIVES)
def test_a_malformed_archive_is_one_line_and_exit_6(
    tmp_path: Path,
    base: Built,
    keys: tuple[Path, Path],
    archive: Callable[[Built], bytes],
    words: str,
) -> None:
    data = archive(base)
    inflate = zlib.decompressobj(31)
    try:
        tar = inflate.decompress(data, 1 << 20)
    except zlib.error:
        tar = b""
    forged, envelope = forge(base, tar, keys[0], archive=data)
    done = run_verify(
        tmp_path,
        forged,
        envelope,
        keys[1],
        "--expect-archive-sha256",
        hashlib.sha256(data).hexdigest(),
    )
    refused(done, 6, words)


def test_bad_arguments_and_unreadable_inputs_exit_2(
    tmp_path: Path, base: Built, keys: tuple[Path, Path]
) -> None:
    pin = ["--expect-archive-sha256", base.archive.archive_sha256]
    refused(
        run_verify(tmp_path, base.archive.data, base.envelope, keys[1]),
        2,
        "--expect-archive-sha256",
    )
    for flags in (
        ["--expect-archive-sha256", "ABC"],
        ["--expect-content-hash", "sha256:" + "0" * 64],
        [*pin, "--expect-function", "Not_A_Name"],
    ):
        done = run_verify(tmp_path, base.archive.data, base.envelope, keys[1], *flags)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    done = run_verify(tmp_path, base.archive.data, base.envelope, tmp_path / "not-a-key.pem", *pin)
    refused(done, 2, "not a PEM public key")
    done = run_cli(
        "verify", str(tmp_path / "missing.tar.gz"), "-e", str(tmp_path / "x"), *pin, cwd=tmp_path
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr


def test_the_documented_exit_codes_are_the_ones_verify_returns() -> None:
    section = (ROOT / "docs" / "deploy.md").read_text().split("### Exit codes of verify", 1)[1]
    rows = [line.split("|")[1:3] for line in section.split("\n\n", 2)[1].splitlines()[2:]]
    documented = {int(code.strip().strip("`")): meaning.strip() for code, meaning in rows}
    assert set(documented) == set(exit_codes())
    for code, summary in exit_codes().items():
        assert documented[code].lower().startswith(summary.split(":")[0].lower()), (
            code,
            documented[code],
        )


# --- pins: a swapped, validly signed context ---------------------------------------------------


def _created(server: Any, request: dict[str, Any]) -> dict[str, Any]:
    reply = server.send(request)
    assert reply.type == "buildcontext.created", reply.data
    assert reply.data["provenance"]["signed"] is True
    data: dict[str, Any] = reply.data
    return data


def _pins(reply: dict[str, Any]) -> list[str]:
    return [
        "--expect-archive-sha256", reply["archiveSha256"],
        "--expect-content-hash", reply["contentHash"],
        "--expect-function", reply["lambdaFunction"],
    ]  # fmt: skip


def test_a_swapped_but_validly_signed_context_is_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    """An older version of the same function, and another function's context, both signed by
    the operator's key and stored by the function itself: the builder holding the new reply
    refuses both, and accepts its own."""
    private, public = write_key(tmp_path, "p256")
    server = start_server(BUILD_CONTEXT_SIGNING_KEY_FILE=str(private))
    older = _created(server, {**example("python"), "sourceCode": "print('v1')\n"})
    newer = _created(server, {**example("python"), "sourceCode": "print('v2')\n"})
    other = _created(server, {**example("python"), "lambdaFunction": "someone-else"})

    def check(stored: dict[str, Any], pins: list[str]) -> Any:
        output = tmp_path / "out.tar.gz"
        output.unlink(missing_ok=True)
        done = run_cli(
            "verify", stored["storage"]["path"],
            "--envelope", stored["provenance"]["envelope"]["path"],
            "--public-key", str(public), "--output", str(output), *pins,
            cwd=tmp_path,
        )  # fmt: skip
        done.wrote_output = output.exists()  # type: ignore[attr-defined]
        return done

    accepted = check(newer, _pins(newer))
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["expected"]["archiveSha256"] == newer["archiveSha256"]
    for swapped in (older, other):
        refused(check(swapped, _pins(newer)), 9, "expected")
        # each pin alone is enough: the digest names the bytes, the content hash the files
        refused(check(swapped, _pins(newer)[:2]), 9, "archive's sha256")
        refused(check(swapped, _pins(newer)[2:4]), 9, "content hash")
    refused(check(other, [*_pins(other)[:4], "--expect-function", "fix-disk"]), 9, "function")


def test_the_documented_kaniko_init_container_builds_the_reply_and_refuses_a_swap(
    start_server: StartServer, tmp_path: Path
) -> None:
    """docs/deploy.md's Job, its init container run as written: the ConfigMap mount at /store
    (the two files the ConfigMap store keeps), the public keys at /keys, the capitals filled in
    from the reply. The checked bytes land in /workspace for kaniko; a swapped context does not."""
    import shutil

    import yaml

    section = (ROOT / "docs" / "deploy.md").read_text().split("## Building the image", 1)[1]
    job = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    (init,) = job["spec"]["template"]["spec"]["initContainers"]
    assert init["args"][:4] == ["python", "-m", "function", "verify"]

    private, public = write_key(tmp_path, "ed25519")
    server = start_server(BUILD_CONTEXT_SIGNING_KEY_FILE=str(private))
    older = _created(server, {**example("python"), "sourceCode": "print('v1')\n"})
    newer = _created(server, {**example("python"), "sourceCode": "print('v2')\n"})
    pod = tmp_path / "pod"
    (pod / "keys").mkdir(parents=True)
    shutil.copy(public, pod / "keys" / "2026-12.pub")
    values = {
        "ARCHIVE_SHA256": newer["archiveSha256"],
        "CONTENT_HASH": newer["contentHash"],
        "restart-crashlooping": newer["lambdaFunction"],
    }
    args = [
        str(pod) + arg
        if arg.startswith(("/store", "/keys", "/workspace"))
        else values.get(arg, arg)
        for arg in init["args"][4:]
    ]
    for stored, code in ((newer, 0), (older, 9)):
        for folder in ("store", "workspace"):
            shutil.rmtree(pod / folder, ignore_errors=True)
            (pod / folder).mkdir()
        shutil.copy(stored["storage"]["path"], pod / "store" / "context.tar.gz")
        shutil.copy(
            stored["provenance"]["envelope"]["path"], pod / "store" / "provenance.dsse.json"
        )
        done = run_cli("verify", *args, cwd=tmp_path)
        assert done.returncode == code, done.stderr
        written = pod / "workspace" / "context.tar.gz"
        if code == 0:
            assert written.read_bytes() == Path(newer["storage"]["path"]).read_bytes()
        else:
            assert not written.exists() and "not the expected" in done.stderr


@pytest.mark.oci
def test_the_documented_shipwright_verify_step_checks_the_reply_over_oci(
    registry: Registry, start_server: StartServer, tmp_path: Path
) -> None:
    """docs/oci.md's `verify` step, its `$(params.…)` filled in from a real reply as the
    documented Build passes them, reading the context and the envelope from a real registry by
    digest: the reply's own context passes; another version's, validly signed, does not."""
    import shutil

    import yaml

    section = (ROOT / "docs" / "oci.md").read_text().split("### Shipwright", 1)[1]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:3]]
    strategy = yaml.safe_load(blocks[0])
    build_doc = next(yaml.safe_load_all(blocks[1]))
    step = strategy["spec"]["steps"][0]
    assert step["name"] == "verify" and step["args"][:4] == ["python", "-m", "function", "verify"]
    declared = {p["name"] for p in strategy["spec"]["parameters"]}
    passed = {p["name"] for p in build_doc["spec"]["paramValues"]}
    assert declared <= passed

    private, public = write_key(tmp_path, "ed25519")
    config = registry.docker_config(tmp_path / "docker" / "config.json")
    env = {
        "BUILD_CONTEXT_STORAGE": "oci",
        **registry.function_env(f"gate-{tmp_path.name[-8:].lower()}", config),
        "BUILD_CONTEXT_SIGNING_KEY_FILE": str(private),
    }
    server = start_server(**env)
    older = _created(server, {**example("python"), "sourceCode": "print('v1')\n"})
    newer = _created(server, {**example("python"), "sourceCode": "print('v2')\n"})
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(public, keys / "2026-12.pub")

    def params(reply: dict[str, Any], pins: dict[str, Any]) -> dict[str, str]:
        envelope = reply["provenance"]["envelope"]
        return {
            "context-image": reply["contextUri"].removeprefix("oci://"),
            "envelope-image": f"{reply['storage']['registry']}/{envelope['repository']}"
            f"@{envelope['digest']}",
            "archive-sha256": pins["archiveSha256"],
            "content-hash": pins["contentHash"],
            "function": pins["lambdaFunction"],
        }

    def run(values: dict[str, str]) -> Any:
        args = []
        for arg in step["args"][4:]:
            for name, value in values.items():
                arg = arg.replace(f"$(params.{name})", value)
            args.append(str(keys) if arg == "/keys" else arg)
        step_env = {e["name"]: e["value"] for e in step["env"]}
        assert step_env["BUILD_CONTEXT_OCI_DOCKER_CONFIG"] == "/registry/config.json"
        return run_cli(
            "verify",
            *args,
            cwd=tmp_path,
            env={**env, **step_env, "BUILD_CONTEXT_OCI_DOCKER_CONFIG": str(config)},
        )

    accepted = run(params(newer, newer))
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["subject"]["context.tar.gz"] == newer["archiveSha256"]
    swapped = run(params(older, newer))
    assert swapped.returncode == 9 and "not the expected" in swapped.stderr, swapped.stderr
    unknown = run(
        {
            **params(newer, newer),
            "context-image": params(newer, newer)["context-image"][:-4] + "0000",
        }
    )
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1, unknown.stderr
