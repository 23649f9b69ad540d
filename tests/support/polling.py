"""Polling until a deadline: the one way tests wait for a server or a condition.

A busy machine makes a probe slow, not wrong: a probe that times out, is refused or is cut
short counts as "not yet", and only the deadline ends the wait. An error that is not
`transient` (say, the process under test exited) ends it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(
    ready: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.1,
    transient: tuple[type[BaseException], ...] = (),
) -> bool:
    """Call `ready` every `interval` seconds until it returns True (then True) or `timeout`
    seconds have passed (then False); an exception of a `transient` type counts as False."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return True
        except transient:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 20,
    *,
    transient: tuple[type[BaseException], ...] = (),
    what: str = "the condition",
) -> None:
    """`poll_until`, failing the test when the deadline passes."""
    assert poll_until(condition, timeout, transient=transient), f"timed out waiting for {what}"
