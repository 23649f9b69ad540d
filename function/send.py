"""`python -m function send`: a CloudEvent over HTTP (like `kn event send --to-url`), the reply
printed. Exit 0 for a reply that is not an HTTP error or `buildcontext.failed`, 1 for one that
is, 2 when the data cannot be read, 3 when no reply came (refused, timed out, not HTTP)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from . import boundary

NO_REPLY = 3


def add_parser(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        help="send a CloudEvent to a URL and print the reply",
        description="Send a CloudEvent over HTTP (like `kn event send --to-url`) and print the "
        "reply.",
        epilog="exit codes: 0 a reply; 1 an HTTP error or buildcontext.failed reply; 2 the data "
        f"cannot be read; {NO_REPLY} no reply (connection refused, timed out, not HTTP)",
    )
    send.add_argument("url")
    send.add_argument("--data", default="-", help="JSON file with the event data, or - for stdin")
    send.add_argument("--type", default="remediation.buildcontext.requested")
    send.add_argument("--source", default="/build-context/cli")
    send.add_argument("--id", default=None)
    send.add_argument("--structured", action="store_true", help="structured instead of binary mode")
    send.add_argument("--timeout", type=float, default=30.0)
    who = send.add_mutually_exclusive_group()
    who.add_argument(
        "--token-file",
        type=Path,
        help="send `Authorization: Bearer` with the token in this file (BUILD_CONTEXT_AUTH=oidc)",
    )
    who.add_argument(
        "--token-for",
        metavar="NAMESPACE/SERVICEACCOUNT",
        help="request a token of this ServiceAccount from the apiserver (TokenRequest, with "
        "the current kubeconfig or the pod's identity) and send it",
    )
    send.add_argument(
        "--audience",
        help="audience of the --token-for token; default: the handler's default audience "
        "(build-context, or build-context-cleanup for pings)",
    )


def run(args: argparse.Namespace) -> int:
    import requests

    try:
        raw = sys.stdin.buffer.read() if args.data == "-" else Path(args.data).read_bytes()
        data = boundary.json_document(raw) if raw.strip() else None
    except (OSError, ValueError) as error:
        print(f"send: cannot read the data: {boundary.quote(str(error), 200)}", file=sys.stderr)
        return 2
    headers, body = _encoded(args, data)
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.post(args.url, headers=headers, data=body, timeout=args.timeout)
    except requests.RequestException as error:
        print(
            f"send: no reply from {boundary.quote(args.url, 200)}: {_why(error, args)}",
            file=sys.stderr,
        )
        return NO_REPLY
    return _print_reply(response)


def _encoded(args: argparse.Namespace, data: Any) -> tuple[dict[str, str], bytes]:
    from cloudevents.conversion import to_binary, to_structured
    from cloudevents.http import CloudEvent

    attributes = {
        "type": args.type,
        "source": args.source,
        "id": args.id or str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    headers, body = (to_structured if args.structured else to_binary)(CloudEvent(attributes, data))
    return dict(headers), body


def _why(error: Exception, args: argparse.Namespace) -> str:
    """The cause in a few words (requests' own message nests three exceptions deep)."""
    import requests

    if isinstance(error, requests.Timeout):
        return f"none within {args.timeout:g} s (--timeout)"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror.lower()}; is the function running, and the URL right?"
        cause = cause.__cause__ or cause.__context__
    return boundary.quote(f"{type(error).__name__}: {error}", 200)


def _print_reply(response: Any) -> int:
    """The status and the `ce-` headers on stderr, the body (JSON indented) on stdout."""
    print(f"HTTP {response.status_code}", file=sys.stderr)
    for name, value in sorted(response.headers.items()):
        if name.lower().startswith("ce-"):
            print(f"{name}: {value}", file=sys.stderr)
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.ok and response.headers.get("ce-type") != "buildcontext.failed" else 1


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            return str(args.token_file.read_text().strip())
        except OSError as error:
            raise SystemExit(
                f"--token-file: cannot read {error.filename}: {error.strerror}"
            ) from None
    if not args.token_for:
        return None
    namespace, _, account = args.token_for.partition("/")
    if not namespace or not account:
        raise SystemExit("--token-for takes NAMESPACE/SERVICEACCOUNT")
    return _requested_token(namespace, account, _audience(args))


def _audience(args: argparse.Namespace) -> str:
    """--audience, else the default audience of the handler the event type goes to."""
    if args.audience:
        return str(args.audience)
    from . import contract
    from .settings import Settings

    field = "auth_cleanup_audience" if args.type == contract.PING else "auth_create_audience"
    return str(Settings.model_fields[field].default)


def _requested_token(namespace: str, account: str, audience: str) -> str:
    """A token of the ServiceAccount for `audience` (TokenRequest), from the kubeconfig's
    cluster or, in a pod, its own."""
    import kubernetes

    try:
        kubernetes.config.load_kube_config()
    except (kubernetes.config.ConfigException, OSError):
        kubernetes.config.load_incluster_config()
    with kubernetes.client.ApiClient() as client:
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        try:
            response = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
                account, namespace, request
            )
        except kubernetes.client.ApiException as error:
            raise SystemExit(
                f"--token-for {namespace}/{account}: the apiserver refused the TokenRequest "
                f"({error.status} {error.reason}); the ServiceAccount must exist and you need "
                "`create` on serviceaccounts/token"
            ) from None
    return str(response.status.token)
