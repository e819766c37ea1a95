"""Backoff for calls that may fail for a moment: capped exponential with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try again.

    Parameters:
      attempts: Tries in all, the first included (default 5).
      base: Delay in seconds after the first failure; doubled after each further one (default 0.5).
      cap: The longest delay, in seconds, also for a server's ``Retry-After`` (default 30).
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Return the seconds to wait after ``failures`` failed tries (1 after the first).

        A server's ``retry_after`` wins over the computed backoff, up to ``cap``.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        ceiling = min(self.cap, self.base * 2 ** (failures - 1))
        # Half-jitter: spreads retries of many workers while keeping a floor.
        return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
