"""Waiting for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 60, what: str | None = None,
               poll: float = 0.05) -> object:
    """Return ``condition()``'s first truthy value, checking every ``poll`` seconds; fail
    after ``timeout`` seconds naming ``what`` (default: the condition's name)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition.__name__}")
        time.sleep(poll)
    return value
