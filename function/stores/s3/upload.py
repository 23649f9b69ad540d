"""Writing an object whole or not at all: one conditional PUT (`If-None-Match: *`), or a
multipart upload completed with the same condition, whose abort is registered the moment the
upload is created (as s3transfer does)."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any

from ...archive import Archive
from ...errors import BuildContextError
from ..base import ContextRecord
from ..failures import NotFound, PreconditionFailed
from .bucket import Bucket, md5
from .codec import object_metadata

log = logging.getLogger("build_context.s3")

ARCHIVE_TYPE = "application/gzip"
MIN_PART_BYTES = 5 * 1024 * 1024


class PartReader(io.RawIOBase):
    """A seekable file over a slice of the archive, so a part is sent without copying it."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._position : self._position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return len(self._view)


@dataclass(frozen=True)
class Uploader:
    bucket: Bucket
    multipart_threshold: int

    @property
    def part_bytes(self) -> int:
        return max(MIN_PART_BYTES, self.multipart_threshold)

    def upload(self, key: str, archive: Archive, record: ContextRecord) -> bool:
        """False when another writer's object already holds the key (our condition lost)."""
        attributes = {"ContentType": ARCHIVE_TYPE, "Metadata": object_metadata(record)}
        if archive.size_bytes <= self.multipart_threshold:
            return self.bucket.put_new(key, archive.data, **attributes)
        attributes.update(self.bucket.encryption)
        return self._upload_parts(key, memoryview(archive.data), attributes)

    def _upload_parts(self, key: str, data: memoryview, attributes: dict[str, Any]) -> bool:
        bucket = self.bucket
        upload_id: str = bucket.send("create_multipart_upload", key, **attributes)["UploadId"]
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self._abort, key, upload_id)
            parts = [
                {
                    "PartNumber": number,
                    "ETag": self._upload_part(
                        key, upload_id, number, data[start : start + self.part_bytes]
                    ),
                }
                for number, start in enumerate(range(0, len(data), self.part_bytes), start=1)
            ]
            try:
                bucket.send(
                    "complete_multipart_upload",
                    key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except (PreconditionFailed, NotFound):
                # Taken; or NoSuchUpload: a retried completion had already succeeded. The
                # caller re-reads the key either way.
                return False
            on_failure.pop_all()
        return True

    def _upload_part(self, key: str, upload_id: str, number: int, part: memoryview) -> str:
        answer = self.bucket.send(
            "upload_part",
            key,
            UploadId=upload_id,
            PartNumber=number,
            Body=PartReader(part),
            ContentMD5=md5(part),
        )
        return str(answer["ETag"])

    def _abort(self, key: str, upload_id: str) -> None:
        bucket = self.bucket
        try:
            bucket.send("abort_multipart_upload", key, UploadId=upload_id)
        except NotFound:
            pass
        except BuildContextError as error:
            log.error(
                "S3 store: could not abort a multipart upload; a lifecycle rule removes it",
                extra={
                    **bucket.log_fields("abort_multipart_upload", key, error),
                    "uploadId": upload_id,
                },
            )
