"""Where `verify` reads from a registry: `oci://REGISTRY/REPOSITORY@sha256:DIGEST` (the reply's
contextUri, or its envelope's manifest digest), the one layer of that manifest: the client
recomputes both digests, so what is read is what the digest names, whoever can push to the
repository. With the store's credentials and CA settings; at most `limit` + 1 bytes."""

from __future__ import annotations

import json

from ...boundary import quote
from ...locations import Unreadable
from ...settings import load_settings
from .client import DIGEST, RegistryClient, RegistryError
from .credentials import configured_ca_file, configured_credentials


def read_location(location: str, limit: int) -> bytes:
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
        return _layer(client, location, repository, digest, limit)
    except RegistryError as error:
        raise Unreadable(f"cannot read {quote(location, 200)}: {quote(str(error), 200)}") from None
    finally:
        client.close()


def _layer(
    client: RegistryClient, location: str, repository: str, digest: str, limit: int
) -> bytes:
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
