"""Fault injection: what can go wrong, and how often.

A :class:`Faults` value describes the faults; the simulator keeps it either globally or for one
snapshot. A snapshot's own faults replace the global ones for everything concerning that
snapshot (they are not merged). The quota and ``register_*`` faults concern no snapshot: only
the global ones count for them. Setting faults again resets their counters.

Counted faults fire on the next N occasions and are then spent, so a client that retries (or
resumes with a Range request) can succeed:

- ``api_errors``: the next N API calls answer HTTP ``api_error_status`` (503 by default).
- ``rate_limits``: the next N API calls answer HTTP 429 with ``Retry-After: retry_after``.
  When both are set, the errors come first.
- ``export_failures``: the next N export operations end in ``failure`` with
  ``failure_reason``; the snapshot goes back to ``ready``.
- ``quota_errors``: the next N create-snapshot calls are refused as over the snapshot quota,
  whatever the quota's usage (the same answer as a real overrun, see
  :data:`worker.simulator.snapshots.QUOTA_EXCEEDED_STATUS`).
- ``register_unreachable``: the next N template registrations cannot reach their URL (nothing
  is fetched); the operation ends in ``failure`` like a connection refused.
- ``register_mismatch``: the next N template registrations read their URL in full but hash
  other bytes (one flipped), so the MD5 differs from ``checksum`` and the operation fails.
- ``truncate_at``, ``reset_at``: a download whose range covers byte N sends the bytes before N,
  then closes the connection (truncate: a clean close although ``Content-Length`` promised
  more; reset: a TCP reset, so the client may see fewer bytes). Counted per fault with
  ``download_fault_times`` (``None``: every time). If both fall in one range, only the
  earlier one fires and is counted.
- ``corrupt_at``: a download whose range covers byte N sends it with its bits flipped; counted
  with ``download_fault_times`` too, and only when that byte is actually sent.

Standing faults hold while they are set:

- ``export_stuck``: export operations stay ``pending`` (clearing it lets them finish).
- ``register_stuck``: template registrations stay ``pending`` the same way.
- ``register_seconds``: template registrations stay ``pending`` at least this many seconds of
  the simulator's clock (a slow registration), however fast their URL was read.
- ``wrong_md5``: the published ``export.md5sum`` is not the MD5 of the served bytes.
- ``url_ttl``: presigned URLs handed out expire after this many seconds.
- ``slow_rate``: downloads are paced to this many bytes per second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: The operation failure reasons of the official spec.
OPERATION_REASONS = (
    "busy",
    "conflict",
    "fault",
    "forbidden",
    "incorrect",
    "interrupted",
    "not-found",
    "partial",
    "unavailable",
    "unknown",
    "unsupported",
)


@dataclass(frozen=True)
class Faults:
    """Faults to inject (see the module docstring for the exact semantics).

    Parameters:
      api_errors: Next N API calls fail with ``api_error_status`` (default 0).
      api_error_status: Status of those failures, 500..599 (default 503).
      rate_limits: Next N API calls answer 429 (default 0).
      retry_after: Seconds in their ``Retry-After`` header (default 1).
      export_failures: Next N export operations end in ``failure`` (default 0).
      failure_reason: The operation's ``reason`` then (default ``"fault"``).
      export_stuck: Export operations stay pending while set (default False).
      quota_errors: Next N create-snapshot calls are over quota (default 0).
      register_unreachable: Next N registrations cannot reach their URL (default 0).
      register_mismatch: Next N registrations hash other bytes than they read (default 0).
      register_stuck: Registrations stay pending while set (default False).
      register_seconds: Registrations take at least this long (default: like any operation).
      wrong_md5: Publish a wrong ``md5sum`` (default False).
      url_ttl: Lifetime of presigned URLs in seconds (default: the simulator's).
      slow_rate: Download pace in bytes per second (default: unlimited).
      truncate_at: Byte offset where downloads end early (default: none).
      reset_at: Byte offset where downloads are reset (default: none).
      corrupt_at: Byte offset served corrupted (default: none).
      download_fault_times: How many downloads each of the three above breaks (default 1;
        ``None``: all of them).
    """

    api_errors: int = 0
    api_error_status: int = 503
    rate_limits: int = 0
    retry_after: int = 1
    export_failures: int = 0
    failure_reason: str = "fault"
    export_stuck: bool = False
    quota_errors: int = 0
    register_unreachable: int = 0
    register_mismatch: int = 0
    register_stuck: bool = False
    register_seconds: float | None = None
    wrong_md5: bool = False
    url_ttl: float | None = None
    slow_rate: int | None = None
    truncate_at: int | None = None
    reset_at: int | None = None
    corrupt_at: int | None = None
    download_fault_times: int | None = 1

    def __post_init__(self) -> None:
        counted = (
            "api_errors",
            "rate_limits",
            "retry_after",
            "export_failures",
            "quota_errors",
            "register_unreachable",
            "register_mismatch",
        )
        for name in counted:
            _check_count(name, getattr(self, name))
        for name in ("truncate_at", "reset_at", "corrupt_at", "download_fault_times"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name))
        if not isinstance(self.api_error_status, int) or not 500 <= self.api_error_status <= 599:
            raise ValueError(f"api_error_status must be 500..599, got {self.api_error_status!r}")
        if self.failure_reason not in OPERATION_REASONS:
            raise ValueError(
                f"failure_reason must be one of {', '.join(OPERATION_REASONS)}, "
                f"got {self.failure_reason!r}"
            )
        for name in ("export_stuck", "register_stuck", "wrong_md5"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("url_ttl", "register_seconds"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.slow_rate is not None:
            _check_count("slow_rate", self.slow_rate)
            if self.slow_rate < 1:
                raise ValueError("slow_rate must be at least 1 byte per second")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build faults from a JSON-like mapping of field names (``-`` may stand for ``_``).

        Raises:
          ValueError: On an unknown field or a bad value.
        """
        known = {f.name for f in fields(cls)}
        values = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


@dataclass(frozen=True)
class DownloadPlan:
    """What one download response does wrong.

    Parameters:
      cut_at: Offset where the body stops (None: it does not).
      reset: True to reset the connection at ``cut_at``, False to close it cleanly.
      corrupt_at: Offset of the byte to flip (None: none).
      rate: Bytes per second to pace the body at (None: unlimited).
    """

    cut_at: int | None = None
    reset: bool = False
    corrupt_at: int | None = None
    rate: int | None = None


class ActiveFaults:
    """A :class:`Faults` value and what is left of its counted faults.

    Not thread-safe by itself: the simulator state calls it under its lock.
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._api_errors = faults.api_errors
        self._rate_limits = faults.rate_limits
        self._export_failures = faults.export_failures
        self._quota_errors = faults.quota_errors
        self._register_unreachable = faults.register_unreachable
        self._register_mismatch = faults.register_mismatch
        times = faults.download_fault_times
        self._downloads = {"truncate": times, "reset": times, "corrupt": times}

    def take_api_fault(self) -> tuple[int, dict[str, str]] | None:
        """Spend one API fault; return its (status, headers), or None when none is left."""
        if self._api_errors > 0:
            self._api_errors -= 1
            return self.faults.api_error_status, {}
        if self._rate_limits > 0:
            self._rate_limits -= 1
            return 429, {"Retry-After": str(self.faults.retry_after)}
        return None

    def take_export_failure(self) -> str | None:
        """Spend one export failure; return its reason, or None when none is left."""
        if self._export_failures > 0:
            self._export_failures -= 1
            return self.faults.failure_reason
        return None

    def take_quota_error(self) -> bool:
        """Spend one quota error; return whether one was left."""
        if self._quota_errors > 0:
            self._quota_errors -= 1
            return True
        return False

    def take_registration_faults(self) -> tuple[bool, bool]:
        """Spend the faults of one registration; return (unreachable, mismatch).

        An unreachable URL reads nothing, so it does not spend a mismatch as well.
        """
        if self._register_unreachable > 0:
            self._register_unreachable -= 1
            return True, False
        if self._register_mismatch > 0:
            self._register_mismatch -= 1
            return False, True
        return False, False

    def _fires(self, name: str, offset: int | None, start: int, end: int) -> bool:
        left = self._downloads[name]
        return offset is not None and start <= offset < end and (left is None or left > 0)

    def _spend(self, name: str) -> None:
        left = self._downloads[name]
        if left is not None:
            self._downloads[name] = left - 1

    def take_download_plan(self, start: int, end: int) -> DownloadPlan:
        """Plan the faults of a response carrying bytes ``[start, end)`` and spend them."""
        faults = self.faults
        cuts = [
            (offset, name == "reset", name)
            for name, offset in (("truncate", faults.truncate_at), ("reset", faults.reset_at))
            if self._fires(name, offset, start, end)
        ]
        cut_at, reset = None, False
        if cuts:
            cut_at, reset, name = min(cuts)
            self._spend(name)
        corrupt_at = None
        limit = end if cut_at is None else cut_at
        if self._fires("corrupt", faults.corrupt_at, start, limit):
            corrupt_at = faults.corrupt_at
            self._spend("corrupt")
        return DownloadPlan(
            cut_at=cut_at, reset=reset, corrupt_at=corrupt_at, rate=faults.slow_rate
        )
