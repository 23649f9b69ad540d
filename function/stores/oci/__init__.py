"""An OCI registry: each context is a single-layer image `<registry>/<prefix>/<ns>/<fn>:<tag>`.

The **context image** depends on the content only: its layer is our reproducible tar.gz
(`application/vnd.oci.image.layer.v1.tar+gzip`), its config a minimal image config whose one
diff_id is the content hash (the sha256 of the uncompressed tar, which is what a diff_id is), and
its annotations name the namespace, function, runtime, hashes and `managed-by`. So the same
request gives the same manifest digest on any machine, at any time, and builders pin it.

What changes — created and expiry times, request id, metadata — lives in a second, tiny
manifest, the **record**: an OCI artifact (`artifactType` below, empty config and layer) whose
`subject` is the context image and whose annotations hold the record. It is tagged
`<tag>.record`; a refresh pushes a new record to that tag and deletes the old one by digest.

Order of a first push: blobs, the record tag, and the context manifest with its tag last: a
crash or outage before the end leaves no tag a builder sees.
A user pins a context by tagging it (`<tag>.retain`, or any other tag of theirs): deleting a
manifest by digest would take every tag on it, so cleanup never deletes a context that carries
a tag it did not make. docs/oci.md has the layout, races and what registry GC must do. client.py speaks the
distribution API (and is the one place its failures are classified), image.py builds the two
manifests, store.py is the store, cleanup.py its listing and deletes, provenance.py the
envelope as a referrer artifact, location.py how `verify` reads an oci:// location.
"""

from .client import RegistryClient, credentials_from_docker_config
from .image import EMPTY_DIGEST, ContextImage, record_from_manifest, record_manifest
from .location import read_location
from .provenance import AttestedOCIStore
from .store import OCIStore

__all__ = [
    "EMPTY_DIGEST",
    "AttestedOCIStore",
    "ContextImage",
    "OCIStore",
    "RegistryClient",
    "credentials_from_docker_config",
    "read_location",
    "record_from_manifest",
    "record_manifest",
]
