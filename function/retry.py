"""Bounded exponential backoff with full jitter, under an overall deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    deadline: float = 20.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.retry_attempts,
            settings.retry_base_delay_seconds,
            settings.retry_max_delay_seconds,
            settings.retry_deadline_seconds,
        )

    def call(
        self,
        operation: Callable[[], T],
        transient: Callable[[BaseException], bool],
        on_retry: Callable[[int, BaseException], None] = lambda attempt, error: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run `operation`; retry transient failures; re-raise the last one when out of budget."""
        start = time.monotonic()
        attempt = 1
        while True:
            try:
                return operation()
            except Exception as error:
                if not transient(error) or attempt >= self.attempts:
                    raise
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
                if time.monotonic() - start + delay > self.deadline:
                    raise
                on_retry(attempt, error)
                sleep(delay)
                attempt += 1
