"""Slot arithmetic for the policy scheduler: which cron slot is due now, and its key.

Pure functions, no clock and no Redis: the scheduler passes ``now`` and the time it
last looked, and gets back at most one slot to fire. Cron expressions have 5 fields
(minute hour day-of-month month day-of-week) and are read in UTC by ``cronsim``
(Debian cron's rules: when both day fields are restricted, either may match).

The rules of issue 11: after downtime the scheduler fires a missed slot **once**
(the latest one), never one older than the grace (``SNAPARCHIVE_SCHEDULE_GRACE``,
default 1 h); the idempotency key of :func:`slot_key` makes a second fire of the
same (policy, slot) by another scheduler harmless (``SET key NX EX``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

from worker.duration import Duration
from worker.errors import ConfigError

GRACE_VARIABLE = "SNAPARCHIVE_SCHEDULE_GRACE"
DEFAULT_GRACE = timedelta(hours=1)

_SECOND = timedelta(seconds=1)
_SECONDS = re.compile(r"[0-9]+")


def utc(moment: datetime, name: str = "datetime") -> datetime:
    """Return the timezone-aware ``moment`` in UTC.

    Raises:
      ValueError: When ``moment`` is naive (its zone would be a guess).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def check_cron(expression: str) -> None:
    """Check that ``expression`` is a 5-field cron expression that fires at least once.

    Raises:
      ValueError: With the reason (wrong field count, a bad field, never fires).
    """
    if not isinstance(expression, str):
        raise ValueError(f"must be a cron expression string, got {type(expression).__name__}")
    if len(expression.split()) != 5:
        raise ValueError(
            "must be a cron expression with 5 fields (minute hour day month weekday), "
            f'got "{expression}"'
        )
    try:
        next(_cron(expression, datetime(2000, 1, 1, tzinfo=UTC)))
    except StopIteration:
        raise ValueError(f'cron expression "{expression}" never fires') from None


def runs_after(expression: str, after: datetime, count: int) -> list[datetime]:
    """Return the next ``count`` slots of ``expression`` strictly after ``after`` (UTC).

    Fewer when the expression stops firing (cronsim looks 50 years ahead at most).

    Raises:
      ValueError: For a bad expression (see :func:`check_cron`), a naive ``after`` or a
        negative ``count``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    runs: list[datetime] = []
    if count == 0:
        return runs
    for slot in _cron(expression, utc(after, "after")):
        runs.append(slot)
        if len(runs) == count:
            break
    return runs


def next_slot(expression: str, after: datetime) -> datetime | None:
    """The first slot strictly after ``after`` (what a scheduler sleeps until), or None."""
    runs = runs_after(expression, after, 1)
    return runs[0] if runs else None


def latest_slot(expression: str, at: datetime) -> datetime | None:
    """The latest slot at or before ``at`` (UTC), or None when there is none in 50 years."""
    at = utc(at, "at")
    # cronsim's reverse iteration yields slots strictly before its start (after one tick
    # of a second); starting one second past ``at`` (whole seconds) includes ``at`` itself.
    start = at.replace(microsecond=0) + _SECOND
    return next(_cron(expression, start, reverse=True), None)


def due_slot(
    expression: str,
    last_checked: datetime | None,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
) -> datetime | None:
    """Return the slot to fire now, or None.

    The slot is the latest one at or before ``now``. It is due when it is newer than
    ``last_checked`` (so a slot fires at one look only) and at most ``grace`` old
    (``now - slot <= grace``). After downtime this gives the latest missed slot once,
    never the ones before it, and nothing when even the latest is older than the grace.

    Parameters:
      expression: The policy's cron expression (5 fields, UTC).
      last_checked: When this scheduler (or the fleet, from Redis) last looked, or None
        when it never did: then only the grace limits. Record ``now`` as the new value
        after the slot's message was sent, so a crash in between looks again.
      now: The current time (timezone-aware).
      grace: How late a slot may still fire (default 1 h, see :func:`grace_from_env`).

    A clock that went backwards (``now`` before ``last_checked``) fires nothing.
    """
    now = utc(now, "now")
    slot = latest_slot(expression, now)
    if slot is None or now - slot > grace:
        return None
    if last_checked is not None and slot <= utc(last_checked, "last_checked"):
        return None
    return slot


def _cron(expression: str, start: datetime, reverse: bool = False) -> CronSim:
    try:
        return CronSim(expression, start, reverse=reverse)
    except CronSimError as exc:
        raise ValueError(f'not a valid cron expression "{expression}" ({exc})') from None


def slot_key(policy: str, slot: datetime, kind: str | None = None) -> str:
    """The idempotency key of one (policy, slot): ``web@2026-12-01T03:00Z``.

    Parameters:
      policy: The policy name (``[a-z0-9][a-z0-9-]*``, so ``@`` and ``:`` are free).
      slot: A slot from :func:`due_slot` (a whole minute; timezone-aware).
      kind: Another task of the same policy, e.g. ``verify``: ``web:verify@...``
        (default: the backup itself, no suffix).

    Raises:
      ValueError: When ``slot`` is not a whole minute (two moments of one minute
        would share a key) or is naive.
    """
    slot = utc(slot, "slot")
    if slot.second or slot.microsecond:
        raise ValueError(f"a slot is a whole minute, got {slot.isoformat()}")
    name = f"{policy}:{kind}" if kind else policy
    return f"{name}@{slot:%Y-%m-%dT%H:%M}Z"


def parse_grace(text: str) -> timedelta:
    """Parse a grace: a whole number of seconds (``900``) or days and hours in the
    duration syntax (``1h``, ``2d12h``).

    Months and years are refused: ``30m`` reads as 30 *months* in that syntax, and a
    grace that long is certainly a typo for minutes, which are written in seconds.

    Raises:
      ValueError: When ``text`` is neither, or is 0.
    """
    text = text.strip()
    if _SECONDS.fullmatch(text):
        grace = timedelta(seconds=int(text))
    else:
        try:
            duration = Duration.parse(text)
        except ValueError:
            raise ValueError(
                f"must be seconds (900) or days and hours (1h, 2d12h), got {text!r}"
            ) from None
        if not duration.is_fixed:
            raise ValueError(
                f"{text!r}: months and years are not allowed here "
                "(m is months, not minutes: give minutes as seconds, e.g. 900)"
            )
        grace = duration.to_timedelta()
    if grace <= timedelta(0):
        raise ValueError(f"must be longer than 0, got {text!r}")
    return grace


def grace_from_env(env: Mapping[str, str] | None = None) -> timedelta:
    """Read ``SNAPARCHIVE_SCHEDULE_GRACE`` from ``env`` (default ``os.environ``);
    default 1 h when unset or empty. See :func:`parse_grace` for the syntax.

    Raises:
      ConfigError: Naming the variable, when its value is malformed.
    """
    env = os.environ if env is None else env
    raw = env.get(GRACE_VARIABLE)
    if not raw:
        return DEFAULT_GRACE
    try:
        return parse_grace(raw)
    except ValueError as exc:
        raise ConfigError(f"{GRACE_VARIABLE}: {exc}") from None
