"""Command line: serve (default) | create | send | cleanup | verify | settings | schemas."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import boundary, send
from .errors import BuildContextError, ConfigurationError

if TYPE_CHECKING:
    from .app import App
    from .contract import BuildContextCreated
    from .verification import Expected, Verified


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m function", description=__doc__)
    commands = parser.add_subparsers(dest="command")

    commands.add_parser("serve", help="run the HTTP server (the default)")

    create = commands.add_parser(
        "create",
        help="build and store a context from local files; print the created event's data",
        description="Build a context from local files with the same validation as the server, "
        "store it in the configured store, and print the data of the buildcontext.created event.",
    )
    create.add_argument("paths", nargs="*", type=Path, help="source files or folders")
    create.add_argument("--function", "-f", help="lambdaFunction name")
    create.add_argument("--runtime", "-r", default=None, help="as the request's `runtime`")
    create.add_argument("--runtime-version")
    create.add_argument("--dependency", "-d", action="append", default=[], help="repeatable")
    create.add_argument(
        "--metadata", "-m", action="append", default=[], help="key=value, repeatable"
    )
    create.add_argument("--ttl-seconds", type=int)
    create.add_argument("--request", type=Path, help="a JSON request (event data) to start from")
    create.add_argument("--output", "-o", type=Path, help="also write the archive here")
    create.add_argument(
        "--provenance", type=Path, help="also write the provenance envelope (DSSE) here"
    )

    send.add_parser(commands)

    cleanup = commands.add_parser(
        "cleanup",
        help="delete expired contexts from every configured store now; print the summary",
        description="Run the same cleanup pass as the PingSource event (docs/cleanup.md) and "
        "print the data of the buildcontext.cleanup.completed event. Exit 1 when any item failed.",
    )
    cleanup.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted, delete nothing"
    )
    cleanup.add_argument(
        "--ttl-seconds",
        type=int,
        help="also treat contexts created more than this many seconds ago as expired",
    )

    _verify_parser(commands)

    settings_cmd = commands.add_parser(
        "settings", help="print every environment variable with its default and meaning"
    )
    settings_cmd.add_argument("--format", choices=["env", "markdown", "configmap"], default="env")
    schemas = commands.add_parser("schemas", help="write the JSON Schemas of the contract")
    schemas.add_argument("folder", type=Path, nargs="?", default=Path("config/schemas"))

    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ConfigurationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        for line in error.details[1:]:
            print(f"  also {line}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    command = args.command or "serve"
    if command == "serve":
        from .server import run
        from .settings import load_settings
        from .telemetry import configure_logging

        settings = load_settings()
        configure_logging(settings.log_level)
        return run(settings)
    if command == "create":
        return _create(args)
    if command == "send":
        return send.run(args)
    if command == "cleanup":
        return _cleanup(args)
    if command == "verify":
        return _verify(args)
    if command == "settings":
        from .docs import render

        print(render(args.format), end="")
        return 0
    if command == "schemas":
        from .docs import write_schemas

        for path in write_schemas(args.folder):
            print(path)
        return 0
    raise AssertionError(command)


def _create(args: argparse.Namespace) -> int:
    from .app import App
    from .settings import load_settings

    settings = load_settings()
    try:
        data = _create_request(args)
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSON's are ValueErrors
        print(f"create: cannot read the input: {boundary.quote(str(error), 200)}", file=sys.stderr)
        return 2
    app = App.from_settings(settings)
    try:
        created = app.create.run(data, f"cli-{uuid.uuid4()}")
        # The request's namespace, as create.py chose it (one it does not allow fails the run).
        namespace = data.get("namespace") or settings.home_namespace
        _write_stored(app, created, namespace, args.output, args.provenance)
    except BuildContextError as error:
        print(json.dumps(_failure(error), indent=2))
        return 1
    finally:
        app.close()
    print(json.dumps(created.wire(), indent=2))
    return 0


def _create_request(args: argparse.Namespace) -> dict[str, Any]:
    """The event data: --request, then the files, then the other options over it."""
    data = boundary.json_document(args.request.read_bytes()) if args.request else {}
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise ValueError("it must be a JSON object (event data), with `files` an object")
    data["files"] = dict(data.pop("files", {})) | _local_files(args.paths)
    for key, value in (
        ("lambdaFunction", args.function),
        ("runtime", args.runtime),
        ("runtimeVersion", args.runtime_version),
        ("ttlSeconds", args.ttl_seconds),
    ):
        if value is not None:
            data[key] = value
    if args.dependency:
        from .runtimes import cli_dependencies  # each runtime reads `-d` its own way

        data["dependencies"] = cli_dependencies(args.dependency, data.get("runtime"))
    if args.metadata:
        data["metadata"] = dict(m.split("=", 1) for m in args.metadata)
    return data


def _local_files(paths: list[Path]) -> dict[str, str]:
    """A folder's files by their path inside it, a file by its name."""
    files = {}
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                files[file.relative_to(path).as_posix()] = file.read_text("utf-8")
        else:
            files[path.name] = path.read_text("utf-8")
    return files


def _write_stored(
    app: App,
    created: BuildContextCreated,
    namespace: str,
    archive: Path | None,
    envelope: Path | None,
) -> None:
    """The archive and its envelope, read back from the store that holds them (before the app
    closes its stores)."""
    store = next(s for s in app.stores if s.backend == created.storage.backend)
    where = (namespace, created.lambda_function, created.content_hash)
    if archive:
        archive.write_bytes(store.get(*where))
    if envelope:
        envelope.write_bytes(store.get_provenance(*where))


def _failure(error: BuildContextError) -> dict[str, Any]:
    return {
        "reason": error.reason,
        "message": error.message,
        "errors": [e.as_dict() for e in error.errors],
        **({"errorsOmitted": error.omitted} if error.omitted else {}),
    }


def _verify_parser(commands: Any) -> None:
    from .refusals import exit_codes

    verify = commands.add_parser(
        "verify",
        help="the builder's gate: check a context archive against its signed provenance",
        description="Check that the archive is the one the builder expects (--expect-*, from "
        "the buildcontext.created reply), that the envelope's signature verifies with the "
        "public key(s), that the archive is its statement's subject and holds only plain files "
        "and folders with safe, unambiguous names, and that the Dockerfile and manifests are "
        "exactly what build-context renders from the statement's parameters. Print a summary "
        "and exit 0 when everything holds; else print one line and exit with the code of the "
        "first check that failed.",
        epilog="exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in exit_codes().items()),
    )
    verify.add_argument(
        "archive", help="the context .tar.gz: a file, s3://BUCKET/KEY or oci://REGISTRY/REPO@DIGEST"
    )
    verify.add_argument(
        "--envelope", "-e", required=True, help="the DSSE envelope: a file, s3:// or oci://"
    )
    verify.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write the archive here once verified (what the builder then reads: an object "
        "changed in the store after the check is never built)",
    )
    verify.add_argument(
        "--public-key",
        "-k",
        type=Path,
        action="append",
        default=[],
        help="PEM public key (Ed25519 or ECDSA P-256), or a folder of them; repeat for "
        "rotation: any one may verify",
    )
    verify.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept an envelope without signature (a function run without a signing key)",
    )
    pins = verify.add_argument_group(
        "expectations",
        "From the buildcontext.created reply. A builder gives at least one digest, so that no "
        "other validly signed context (an older version, another function's) passes.",
    )
    pins.add_argument("--expect-archive-sha256", metavar="HEX", help="the reply's archiveSha256")
    pins.add_argument("--expect-content-hash", metavar="HEX", help="the reply's contentHash")
    pins.add_argument("--expect-function", metavar="NAME", help="the reply's lambdaFunction")
    pins.add_argument(
        "--unpinned",
        action="store_true",
        help="check without an expected digest (inspecting a context by hand; never a builder)",
    )


def _verify(args: argparse.Namespace) -> int:
    """One line on stderr and the exit code of the check's class for every refusal (and for
    a bug, 1, rather than a traceback a builder's log would cut)."""
    from . import verification
    from .boundary import quote
    from .refusals import UnusableInput, VerificationFailed

    try:
        expected = verification.Expected(
            args.expect_archive_sha256, args.expect_content_hash, args.expect_function
        )
        if not expected.pinned and not args.unpinned:
            raise UnusableInput(
                "give --expect-archive-sha256 or --expect-content-hash (the reply's "
                "archiveSha256, contentHash), or --unpinned to check any context by hand"
            )
        verified = _verified(args, expected)
    except VerificationFailed as error:
        print(f"verify: REFUSED ({error.summary}): {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a bug: still one line, and not a refusal's code
        print(
            f"verify: internal error: {quote(f'{type(error).__name__}: {error}', 300)}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(_verify_summary(verified, expected), indent=2))
    return 0


def _verified(args: argparse.Namespace, expected: Expected) -> Verified:
    """The archive and envelope read and checked; --output written once they hold."""
    from . import locations, verification
    from .refusals import UnusableInput
    from .signing import load_public_keys

    try:
        keys = load_public_keys(args.public_key)
    except OSError as error:
        raise UnusableInput(f"cannot read {error.filename}: {error.strerror}") from None
    archive = locations.read(args.archive, verification.MAX_ARCHIVE_BYTES)
    envelope = locations.read(args.envelope, verification.MAX_ENVELOPE_BYTES)
    verified = verification.verify(archive, envelope, keys, args.allow_unsigned, expected)
    if args.output:
        try:
            args.output.write_bytes(archive)
        except OSError as error:
            raise UnusableInput(f"cannot write --output: {error.strerror}") from None
    return verified


def _verify_summary(verified: Verified, expected: Expected) -> dict[str, Any]:
    parsed = verified.parsed
    definition = parsed.predicate.buildDefinition
    pins = (
        ("archiveSha256", expected.archive_sha256),
        ("contentHash", expected.content_hash),
        ("lambdaFunction", expected.function),
    )
    return {
        "verified": True,
        "signed": verified.keyid is not None,
        "keyid": verified.keyid,
        "subject": {s.name: s.digest.sha256 for s in parsed.subject},
        "function": parsed.external.function,
        "runtime": parsed.external.runtime,
        "runtimeVersion": parsed.external.runtimeVersion,
        "dependenciesLocked": parsed.external.dependenciesLocked,
        "baseImages": [d.uri for d in definition.resolvedDependencies],
        "files": len(parsed.external.files),
        "expected": {k: v for k, v in pins if v is not None},
    }


def _cleanup(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .app import App
    from .contract import CleanupRequest

    try:
        request = CleanupRequest(ttl_seconds=args.ttl_seconds)
    except ValidationError:
        print("--ttl-seconds: must be an integer >= 0", file=sys.stderr)
        return 2
    app = App.from_settings()
    try:
        completed = app.cleanup.run(request, dry_run=args.dry_run, request_id=f"cli-{uuid.uuid4()}")
    finally:
        app.close()
    print(json.dumps(completed.wire(), indent=2))
    return 1 if any(store.errors for store in completed.stores) else 0


if __name__ == "__main__":
    sys.exit(main())
