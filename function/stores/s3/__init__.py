"""S3 or any S3-compatible server: <prefix><namespace>/<function>/<contentHash>.tar.gz.

The object appears whole or not at all: a single conditional PUT (`If-None-Match: *`), or a
multipart upload completed with the same condition and aborted on any failure (upload.py). The
record lives in the object's user metadata next to a `managed-by` marker (codec.py), so listing
and cleanup never touch objects we did not write. A `build-context.dev/retain=true` object tag
pins a context.

Refresh (pushing the expiry of a reused context forward) is a metadata self-copy, which keeps
the ETag, so `If-Match` cannot tell cleanup about it. Cleanup therefore claims a key (an empty
`<key>.deleting` object written with `If-None-Match`, claims.py) for its re-check and delete,
and a reuse re-reads the object after seeing no claim. docs/s3.md, Races, has the argument.
Cleanup sends its deletes a page at a time (delete.py): the same claim and re-check per key,
then one DeleteObjects call for the keys that still qualify. botocore's failures are read in
one place (errors.py); every call goes through bucket.py. Each context's provenance envelope
is an object beside its archive (provenance.py); `verify` reads s3:// locations (location.py).
"""

from .bucket import Head, s3_client
from .claims import ClaimTimes
from .codec import object_metadata, record_from_metadata
from .location import read_location
from .provenance import AttestedS3Store
from .store import S3Store

__all__ = [
    "AttestedS3Store",
    "ClaimTimes",
    "Head",
    "S3Store",
    "object_metadata",
    "read_location",
    "record_from_metadata",
    "s3_client",
]
