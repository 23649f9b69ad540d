"""botocore's exceptions as our typed failures, with messages that name the fix: the one place
where S3 error codes are read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ...errors import ConfigurationError
from ..failures import (
    Forbidden,
    NotFound,
    PreconditionFailed,
    StoreError,
    TooLarge,
    Unavailable,
    Unsupported,
)

FORBIDDEN = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "Forbidden",
        "403",
    }
)
CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})
TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
TAKEN = "PreconditionFailed"
UNSUPPORTED = "NotImplemented"
IAM_ACTION = {
    "head_object": "s3:GetObject (and s3:ListBucket, without which a missing key is a 403)",
    "get_object": "s3:GetObject",
    "get_object_tagging": "s3:GetObjectTagging",
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "copy_object": "s3:GetObject and s3:PutObject",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
}


@dataclass(frozen=True)
class Call:
    """Where a call went: what its failure message names."""

    operation: str
    bucket: str
    key: str
    prefix: str
    endpoint: str

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__


def status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class S3Boundary:
    """Which botocore failures are worth another attempt, and how they read in a log."""

    def transient(self, error: BaseException) -> bool:
        if isinstance(error, ClientError):
            if code(error) == UNSUPPORTED:
                return False
            return code(error) in TRANSIENT or status(error) >= 500 or status(error) == 429
        return isinstance(error, (HTTPClientError, BotoConnectionError, IncompleteReadError))

    def describe(self, error: BaseException) -> str:
        if isinstance(error, ClientError):
            details = error.response.get("Error", {})
            return f"{details.get('Code', '')} {details.get('Message', '')}".strip()
        return str(error) or type(error).__name__


BOUNDARY = S3Boundary()


def startup_problem(failure: StoreError, bucket: str, endpoint: str) -> ConfigurationError | None:
    """What stops start-up for good: a missing bucket, no credentials at all. Anything else can
    be fixed while the function runs (access granted, the endpoint back)."""
    if failure.code in ("NoCredentialsError", "PartialCredentialsError"):
        return ConfigurationError(
            "AWS_ACCESS_KEY_ID",
            "no AWS credentials found for the S3 store",
            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the pod a role "
            "(IRSA, EKS Pod Identity); see docs/s3.md.",
        )
    if failure.code in ("NoSuchBucket", "404"):
        return ConfigurationError(
            "BUILD_CONTEXT_S3_BUCKET",
            f"bucket {bucket!r} does not exist at {endpoint}",
            "Create it or fix the name (and BUILD_CONTEXT_S3_ENDPOINT_URL).",
        )
    return None


def _denied(call: Call, found: str) -> StoreError:
    return Forbidden(
        f"S3 store: {call.operation} on {call.location} was denied ({found}); grant the "
        f"function's identity {IAM_ACTION.get(call.operation, 's3:*')} on "
        f"arn:aws:s3:::{call.bucket}/{call.prefix}* (docs/s3.md lists the policy)",
        found,
    )


def _bad_credentials(call: Call, found: str) -> StoreError:
    return Forbidden(
        f"S3 store: {call.endpoint} rejected the credentials for {call.operation} on "
        f"{call.location} ({found}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the "
        "pod's role",
        found,
    )


def _no_bucket(call: Call, found: str) -> StoreError:
    return Unavailable(
        f"S3 store: bucket {call.bucket!r} does not exist at {call.endpoint}; create it or "
        "fix BUILD_CONTEXT_S3_BUCKET",
        found,
    )


def _too_large(call: Call, found: str) -> StoreError:
    return TooLarge(
        f"S3 store: {call.endpoint} refused the archive for {call.location} as too large; "
        "send less source or raise the server's object size limit",
        found,
    )


REFUSED: dict[str, Callable[[Call, str], StoreError]] = {
    **dict.fromkeys(FORBIDDEN, _denied),
    **dict.fromkeys(CREDENTIALS, _bad_credentials),
    "NoSuchBucket": _no_bucket,
    "EntityTooLarge": _too_large,
}
"""Codes whose failure says what to fix whatever the call, checked before retrying counts."""
SETTLED: dict[str, type[StoreError]] = {
    TAKEN: PreconditionFailed,
    **dict.fromkeys(MISSING, NotFound),
    UNSUPPORTED: Unsupported,
}
"""Codes a caller branches on (a lost condition, a missing key, a refused feature)."""


def translate(error: BaseException, attempts: int, call: Call) -> StoreError | None:
    """The typed failure of `call` (None for an exception that is not botocore's)."""
    if not isinstance(error, (ClientError, BotoCoreError)):
        return None
    found = code(error)
    where = f"{call.operation} on {call.location}"
    said = f"{found}: {BOUNDARY.describe(error)}"
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return Forbidden(
            f"S3 store: no AWS credentials for {where}; set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or give the pod a role (docs/s3.md)",
            found,
        )
    if found in REFUSED:
        return REFUSED[found](call, found)
    if BOUNDARY.transient(error):
        return Unavailable(
            f"S3 store: {where} at {call.endpoint} failed after {attempts} attempt(s) "
            f"({said}); the request can be retried",
            found,
        )
    settled = f"S3 store: {where} at {call.endpoint} failed ({said}); check the S3 settings "
    settled += "(docs/s3.md)"
    if found in SETTLED:
        return SETTLED[found](settled, found)
    return Unavailable(settled, found, retryable=False)
