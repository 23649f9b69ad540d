"""Time as the code under test takes it (a dependency): moved or recorded, never waited for."""

from __future__ import annotations


class SimulatedMonotonic:
    """A monotonic clock (`time.monotonic`'s place) that the test moves instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SleepRecorder:
    """A `sleep` that records the delays asked for (backoffs) instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
