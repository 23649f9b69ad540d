"""Signed provenance: our `verify`, an independent verifier, and what each must refuse.

The independent checks use securesystemslib's DSSE implementation (signature over the DSSE
pre-authentication encoding) and the in-toto attestation framework's protobuf schemas for the
Statement v1 and the SLSA Provenance v1 predicate (strict: an unknown field fails).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from function import archive as archives
from function import provenance
from function.create import Built, CreateService
from function.settings import Settings
from function.stores import open_store
from tests.conftest import StartServer
from tests.support.cli import run_cli, sweep
from tests.support.contexts import example

KEY_KINDS = ["ed25519", "p256"]


def _private_key(kind: str) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def write_key(folder: Path, kind: str, name: str = "key") -> tuple[Path, Path]:
    key = _private_key(kind)
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def build(tmp_path: Path, request: dict[str, Any], key: Path | None, **settings: Any) -> Built:
    loaded = Settings(fs_root=tmp_path / "store", **settings)
    service = CreateService(
        loaded,
        open_store("filesystem", loaded),
        signer=provenance.SigningKey.load(key) if key else None,
    )
    return service.build(request, "req-42", "/tests/agent-sre")


def verify_cli(
    archive: bytes, envelope: bytes, keys: list[Path], folder: Path, *extra: str, pin: bool = True
) -> subprocess.CompletedProcess[str]:
    """`verify` of these bytes; with `pin`, expecting the archive's own digest (as a builder
    given the reply of this very context would)."""
    (folder / "ctx.tar.gz").write_bytes(archive)
    (folder / "ctx.dsse.json").write_bytes(envelope)
    args = [str(folder / "ctx.tar.gz"), "--envelope", str(folder / "ctx.dsse.json")]
    for key in keys:
        args += ["--public-key", str(key)]
    if pin:
        args += ["--expect-archive-sha256", hashlib.sha256(archive).hexdigest()]
    return run_cli("verify", *args, *extra, cwd=folder)


def statement_of(envelope: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return body


@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize("name", ["python-dependencies", "go-dependencies"])
def test_signed_context_verifies_with_ours_and_an_independent_verifier(
    tmp_path: Path, kind: str, name: str
) -> None:
    private, public = write_key(tmp_path, kind)
    built = build(tmp_path, example(name), private, registry_mirror="mirror.local/library/")

    done = verify_cli(built.archive.data, built.envelope, [public], tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["signed"] is True
    assert summary["subject"] == {
        "context.tar.gz": built.archive.archive_sha256,
        "context.tar": built.archive.content_hash,
    }

    # securesystemslib: DSSE signature with the public key, keyid as we publish it.
    envelope = Envelope.from_dict(json.loads(built.envelope))
    public_key = serialization.load_pem_public_key(public.read_bytes())
    keyid = hashlib.sha256(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()
    accepted = envelope.verify([SSlibKey.from_crypto(public_key, keyid=keyid)], 1)
    assert list(accepted) == [keyid]
    assert envelope.payload_type == "application/vnd.in-toto+json"

    # in-toto attestation schemas: Statement v1, SLSA Provenance v1, strictly.
    body = json.loads(envelope.payload)
    statement = json_format.ParseDict(body, statement_pb2.Statement())
    json_format.ParseDict(body["predicate"], provenance_pb2.Provenance())
    assert statement.predicate_type == "https://slsa.dev/provenance/v1"
    digests = {s.name: s.digest["sha256"] for s in statement.subject}
    assert digests == summary["subject"]

    definition = body["predicate"]["buildDefinition"]
    assert definition["buildType"] == "https://build-context.dev/provenance/context/v1"
    external = definition["externalParameters"]
    assert external["function"] == example(name)["lambdaFunction"]
    assert external["request"] == {"id": "req-42", "source": "/tests/agent-sre"}
    with tarfile.open(fileobj=io.BytesIO(built.archive.data)) as tar:
        on_disk = {
            m.name: {"sha256": hashlib.sha256(tar.extractfile(m).read()).hexdigest()}  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert external["files"] == on_disk
    assert definition["internalParameters"]["registryMirror"] == "mirror.local/library/"
    uris = [d["uri"] for d in definition["resolvedDependencies"]]
    assert uris and all(u.startswith("docker://mirror.local/library/") for u in uris)
    run = body["predicate"]["runDetails"]
    assert run["builder"]["id"] == "https://build-context.dev/builder/build-context"
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]


def _tamper_archive(built: Built) -> bytes:
    data = bytearray(built.archive.data)
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def _tamper_statement(built: Built) -> bytes:
    envelope = json.loads(built.envelope)
    body = statement_of(built.envelope)
    body["predicate"]["buildDefinition"]["externalParameters"]["request"]["id"] = "req-43"
    envelope["payload"] = base64.b64encode(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    return json.dumps(envelope).encode()


def test_a_changed_byte_in_the_archive_or_the_statement_or_another_key_is_refused(
    tmp_path: Path,
) -> None:
    private, public = write_key(tmp_path, "ed25519")
    _, other = write_key(tmp_path, "ed25519", "other")
    built = build(tmp_path, example("python-dependencies"), private)

    tampered = _tamper_archive(built)
    archive = verify_cli(tampered, built.envelope, [public], tmp_path, "--unpinned", pin=False)
    assert archive.returncode == 8
    assert "sha256 is not the subject context.tar.gz" in archive.stderr
    # A builder pins the reply's digest: the changed archive is not the expected one.
    pinned = ["--expect-archive-sha256", built.archive.archive_sha256]
    archive = verify_cli(tampered, built.envelope, [public], tmp_path, *pinned, pin=False)
    assert archive.returncode == 9
    assert "not the expected" in archive.stderr

    statement = verify_cli(built.archive.data, _tamper_statement(built), [public], tmp_path)
    assert statement.returncode == 4
    assert "no signature verifies" in statement.stderr

    key = verify_cli(built.archive.data, built.envelope, [other], tmp_path)
    assert key.returncode == 4
    assert "no signature verifies" in key.stderr

    # The independent verifier refuses the changed statement and the other key too.
    def sslib(path: Path) -> SSlibKey:
        public_key = serialization.load_pem_public_key(path.read_bytes())
        return SSlibKey.from_crypto(public_key, keyid=provenance.keyid(public_key))  # type: ignore[arg-type]

    Envelope.from_dict(json.loads(built.envelope)).verify([sslib(public)], 1)
    with pytest.raises(VerificationError):
        Envelope.from_dict(json.loads(_tamper_statement(built))).verify([sslib(public)], 1)
    with pytest.raises(VerificationError):
        Envelope.from_dict(json.loads(built.envelope)).verify([sslib(other)], 1)


def test_rotation_any_of_several_public_keys_verifies(tmp_path: Path) -> None:
    old_private, old_public = write_key(tmp_path, "p256", "old")
    new_private, new_public = write_key(tmp_path, "ed25519", "new")
    folder = tmp_path / "public-keys"  # as a mounted ConfigMap of the keys in rotation
    folder.mkdir()
    (folder / "old.pub").write_bytes(old_public.read_bytes())
    (folder / "new.pub").write_bytes(new_public.read_bytes())
    for private in (old_private, new_private):
        built = build(tmp_path, example("nodejs"), private)
        keyid = provenance.SigningKey.load(private).keyid
        for keys in ([old_public, new_public], [folder]):
            done = verify_cli(built.archive.data, built.envelope, keys, tmp_path)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["keyid"] == keyid


def _repack(built: Built, change: dict[str, str]) -> tuple[bytes, bytes]:
    """A context changed in the store by someone who also rewrote the statement to match
    (digests, subjects): only the render check can catch it."""
    with tarfile.open(fileobj=io.BytesIO(built.archive.data)) as tar:
        files = {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    files.update(change)
    archive = archives.build(files)
    body = statement_of(built.envelope)
    body["subject"] = [
        {"name": "context.tar.gz", "digest": {"sha256": archive.archive_sha256}},
        {"name": "context.tar", "digest": {"sha256": archive.content_hash}},
    ]
    body["predicate"]["buildDefinition"]["externalParameters"]["files"] = provenance.file_digests(
        {p: t.encode() for p, t in files.items()}
    )
    return archive.data, provenance.envelope(body, None)


def test_a_dockerfile_or_manifest_not_rendered_from_the_parameters_is_refused(
    tmp_path: Path,
) -> None:
    built = build(tmp_path, example("python-dependencies"), None)
    done = verify_cli(built.archive.data, built.envelope, [], tmp_path, "--allow-unsigned")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signed"] is False

    dockerfile = built.valid.runtime.render(
        built.valid.runtime_version, built.valid.dependencies, Settings()
    ).dockerfile.replace("USER 10001:0\n", "USER 0:0\n")
    for change in (
        {"Dockerfile": dockerfile},
        {"requirements.txt": "requests>=2.31\nevil-package==1.0\n"},
    ):
        archive, envelope = _repack(built, change)
        done = verify_cli(archive, envelope, [], tmp_path, "--allow-unsigned")
        assert done.returncode == 8, change
        assert "is not what build-context renders" in done.stderr
    # And the unsigned envelope is refused unless asked for.
    done = verify_cli(built.archive.data, built.envelope, [], tmp_path)
    assert done.returncode == 4 and "unsigned" in done.stderr


def test_the_reply_says_whether_the_provenance_is_signed(
    start_server: StartServer, tmp_path: Path
) -> None:
    unsigned = start_server().send(example("python"))
    assert unsigned.type == "buildcontext.created", unsigned
    assert unsigned.data["provenance"]["signed"] is False
    assert "keyid" not in unsigned.data["provenance"]

    private, _ = write_key(tmp_path, "ed25519")
    signed = start_server(
        BUILD_CONTEXT_SIGNING_KEY_FILE=str(private), BUILD_CONTEXT_FS_ROOT=str(tmp_path / "other")
    ).send(example("python"))
    assert signed.type == "buildcontext.created", signed
    assert signed.data["provenance"]["signed"] is True
    assert signed.data["provenance"]["keyid"] == provenance.SigningKey.load(private).keyid
    assert signed.data["provenance"]["predicateType"] == "https://slsa.dev/provenance/v1"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a key", "not an unencrypted PEM private key"),
        (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "only Ed25519 and ECDSA P-256 keys sign",
        ),
    ],
)
def test_an_unusable_signing_key_stops_start_up(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(content)
    done = run_cli(
        "cleanup", "--dry-run", cwd=tmp_path, env={"BUILD_CONTEXT_SIGNING_KEY_FILE": str(key)}
    )
    assert done.returncode == 2
    assert "BUILD_CONTEXT_SIGNING_KEY_FILE" in done.stderr and problem in done.stderr


def test_the_filesystem_store_keeps_the_envelope_beside_the_archive_and_cleanup_deletes_both(
    tmp_path: Path,
) -> None:
    private, public = write_key(tmp_path, "p256")
    env = {
        "BUILD_CONTEXT_FS_ROOT": str(tmp_path / "store"),
        "BUILD_CONTEXT_SIGNING_KEY_FILE": str(private),
    }
    request = tmp_path / "request.json"
    request.write_text(json.dumps(example("go-dependencies")))
    done = run_cli(
        "create",
        "--request",
        str(request),
        "-o",
        "ctx.tar.gz",
        "--provenance",
        "p.json",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    envelope = Path(created["provenance"]["envelope"]["path"])
    assert envelope.parent == Path(created["storage"]["path"]).parent
    assert envelope.read_bytes() == (tmp_path / "p.json").read_bytes()
    checked = run_cli(
        "verify",
        created["storage"]["path"],
        "-e",
        str(envelope),
        "-k",
        str(public),
        "--expect-archive-sha256",
        created["archiveSha256"],
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr

    summary = sweep(tmp_path, env)["stores"][0]
    assert summary["deleted"] == 1, summary
    assert not envelope.exists() and not envelope.parent.exists()


def test_a_reused_context_answers_with_the_envelope_stored_first(
    start_server: StartServer, tmp_path: Path
) -> None:
    first_key, _ = write_key(tmp_path, "ed25519", "first")
    second_key, _ = write_key(tmp_path, "ed25519", "second")
    root = str(tmp_path / "shared-store")
    first = start_server(BUILD_CONTEXT_FS_ROOT=root, BUILD_CONTEXT_SIGNING_KEY_FILE=str(first_key))
    created = first.send(example("python"))
    assert created.data["reused"] is False
    second = start_server(
        BUILD_CONTEXT_FS_ROOT=root, BUILD_CONTEXT_SIGNING_KEY_FILE=str(second_key)
    )
    reused = second.send(example("python"))
    assert reused.data["reused"] is True
    assert reused.data["provenance"] == created.data["provenance"]
    assert reused.data["provenance"]["keyid"] == provenance.SigningKey.load(first_key).keyid
