"""When to look at a pending Exoscale operation again.

The schedule is the one of the official clients (python-exoscale ``wait``, egoscale v3):
every 3 s for the first 30 s, then rising linearly to 60 s at 15 minutes, then every minute.
"""

from __future__ import annotations

MIN_INTERVAL = 3.0
MAX_INTERVAL = 60.0
_SLOPE = (MAX_INTERVAL - MIN_INTERVAL) / (900 - 30)
_OFFSET = MIN_INTERVAL - 30 * _SLOPE


def poll_interval(elapsed: float) -> float:
    """Return the seconds to wait before the next check, ``elapsed`` seconds into a wait."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, _SLOPE * elapsed + _OFFSET))
