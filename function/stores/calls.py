"""One storage call: a client span, transient failures retried, each retry counted and logged,
and the SDK's exception turned into a typed failure (`failures.py`) once retrying is over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from opentelemetry import trace

from ..retry import RetryPolicy
from ..telemetry import Telemetry
from .failures import StoreError

T = TypeVar("T")
log = logging.getLogger("build_context.stores")


class Boundary(Protocol):
    """How one SDK's exceptions read: the one place each SDK is mapped."""

    def transient(self, error: BaseException) -> bool:
        """Worth another attempt of the same call."""
        ...

    def describe(self, error: BaseException) -> str:
        """Short text of the failure for a log line."""
        ...


Translate = Callable[[BaseException, int], StoreError | None]
"""The SDK exception after so many attempts as a typed failure; None when not the SDK's."""


@dataclass(frozen=True)
class StorageCalls:
    backend: str
    boundary: Boundary
    telemetry: Telemetry
    retry: RetryPolicy
    sleep: Callable[[float], None] = time.sleep

    def run(
        self,
        operation: str,
        call: Callable[[], T],
        translate: Translate,
        *,
        span: str,
        attributes: Mapping[str, Any],
        fields: Mapping[str, Any],
        policy: RetryPolicy | None = None,
    ) -> T:
        """`call` under `policy` (the store's by default); `fields` go on the "retried" log."""
        attempts = 1

        def retried(attempt: int, error: BaseException) -> None:
            nonlocal attempts
            attempts = attempt + 1
            self.telemetry.retried(self.backend, attempt, error)
            log.warning(
                "storage call retried",
                extra={
                    "store": self.backend,
                    "operation": operation,
                    **fields,
                    "attempt": attempt,
                    "error": self.boundary.describe(error),
                },
            )

        with self.telemetry.span(span, dict(attributes), trace.SpanKind.CLIENT) as current:
            try:
                return (policy or self.retry).call(
                    call, self.boundary.transient, retried, self.sleep
                )
            except Exception as error:
                typed = translate(error, attempts)
                if typed is None:
                    raise
                if typed.code:
                    current.set_attribute("error.type", typed.code)
                raise typed from error
