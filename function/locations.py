"""Where `verify` reads a context and its envelope: a local file, `s3://BUCKET/KEY`, or
`oci://REGISTRY/REPOSITORY@sha256:DIGEST` (the OCI store's contextUri, or its envelope's
manifest digest): the one layer of that manifest. Each read is bounded; a location that cannot
be read raises Unreadable (exit code 2)."""

from __future__ import annotations

import json

from .boundary import quote
from .signing import UnusableInput


class Unreadable(UnusableInput):
    """The location cannot be read: missing, refused, or not the shape expected there."""


def read(location: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes, so that a larger input is refused by the check rather than
    filling memory (a registry's blob over the limit is refused while it is read)."""
    if location.startswith("s3://"):
        return _s3(location, limit)
    if location.startswith("oci://"):
        return _oci(location, limit)
    try:
        with open(location, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as error:
        raise Unreadable(f"cannot read {quote(location, 200)}: {error.strerror}") from None


def _s3(location: str, limit: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    from .settings import load_settings
    from .stores.s3 import s3_client

    bucket, _, key = location.removeprefix("s3://").partition("/")
    client = s3_client(load_settings())
    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit}")["Body"]
        data: bytes = body.read()
    except client.exceptions.NoSuchKey:
        raise Unreadable(f"{quote(location, 200)} does not exist") from None
    except (BotoCoreError, ClientError) as error:
        raise Unreadable(f"cannot read {quote(location, 200)}: {quote(str(error), 200)}") from None
    return data


def _oci(location: str, limit: int) -> bytes:
    """The single layer of the manifest pinned by digest: the client recomputes both digests,
    so what is read is what the digest names, whoever can push to the repository."""
    from .settings import load_settings
    from .stores.oci.client import DIGEST, RegistryClient, RegistryError
    from .stores.oci.credentials import configured_ca_file, configured_credentials

    reference = location.removeprefix("oci://")
    name, _, digest = reference.partition("@")
    registry, _, repository = name.partition("/")
    if not (registry and repository and DIGEST.fullmatch(digest)):
        raise Unreadable(
            f"{quote(location, 200)}: give oci://REGISTRY/REPOSITORY@sha256:DIGEST (a manifest "
            "pinned by digest, as the reply's contextUri and provenance.envelope.digest)"
        )
    settings = load_settings()
    client = RegistryClient(
        registry,
        credentials=configured_credentials(settings.model_copy(update={"oci_registry": registry})),
        insecure_http=settings.oci_insecure_http,
        ca_file=configured_ca_file(settings.oci_ca_file),
        timeout=settings.retry_deadline_seconds,
        pool_size=1,
    )
    try:
        found = client.get_manifest(repository, digest)
        if found is None:
            raise Unreadable(f"{quote(location, 200)} does not exist")
        try:
            (layer,) = json.loads(found[0])["layers"]
            blob = str(layer["digest"])
        except (ValueError, KeyError, TypeError):
            raise Unreadable(f"{quote(location, 200)} is not a manifest of one layer") from None
        if not DIGEST.fullmatch(blob):
            raise Unreadable(f"{quote(location, 200)}: its layer has no sha256 digest")
        return client.get_blob(repository, blob, limit)
    except RegistryError as error:
        raise Unreadable(f"cannot read {quote(location, 200)}: {quote(str(error), 200)}") from None
    finally:
        client.close()
