"""Where `verify` reads from S3: `s3://BUCKET/KEY` (the reply's contextUri, or the envelope's
key), with the store's client settings; at most `limit` + 1 bytes."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from ...boundary import quote
from ...locations import Unreadable
from ...settings import load_settings
from .bucket import s3_client


def read_location(location: str, limit: int) -> bytes:
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
