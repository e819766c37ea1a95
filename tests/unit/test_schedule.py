"""Scheduler slot arithmetic under a controlled clock: one fire per slot, the latest
missed slot once after downtime, nothing older than the grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.errors import ConfigError
from worker.schedule import (
    DEFAULT_GRACE,
    check_cron,
    due_slot,
    grace_from_env,
    latest_slot,
    next_slot,
    parse_grace,
    runs_after,
    slot_key,
)

NIGHTLY = "0 3 * * *"
HOURLY = "0 * * * *"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_runs_after_are_strictly_after() -> None:
    assert runs_after(NIGHTLY, at("2026-12-01 03:00"), 2) == [
        at("2026-12-02 03:00"),
        at("2026-12-03 03:00"),
    ]
    assert runs_after(NIGHTLY, at("2026-12-01 02:59:59.5"), 1) == [at("2026-12-01 03:00")]
    assert runs_after(NIGHTLY, at("2026-12-01 02:00"), 0) == []
    assert next_slot("0 4 * * 0", at("2026-12-01 00:00")) == at("2026-12-06 04:00")  # Sunday


def test_latest_slot_includes_now() -> None:
    assert latest_slot(NIGHTLY, at("2026-12-01 03:00")) == at("2026-12-01 03:00")
    assert latest_slot(NIGHTLY, at("2026-12-01 03:00:00.500")) == at("2026-12-01 03:00")
    assert latest_slot(NIGHTLY, at("2026-12-01 02:59:59.999")) == at("2026-11-30 03:00")


@pytest.mark.parametrize(
    ("expression", "last_checked", "now", "expected"),
    [
        # On time: the slot passed since the last look.
        (NIGHTLY, "2026-12-01 02:59:30", "2026-12-01 03:00:05", "2026-12-01 03:00"),
        # Exactly at the slot.
        (NIGHTLY, "2026-12-01 02:59:30", "2026-12-01 03:00:00", "2026-12-01 03:00"),
        # The look that fired it was at 03:00:05: the next look fires nothing.
        (NIGHTLY, "2026-12-01 03:00:05", "2026-12-01 03:00:35", None),
        (NIGHTLY, "2026-12-01 03:00:00", "2026-12-01 03:00:30", None),
        # Down from 00:10 to 05:30: hourly slots 01:00 .. 05:00 missed, only 05:00 fires.
        (HOURLY, "2026-12-01 00:10", "2026-12-01 05:30", "2026-12-01 05:00"),
        # Down over the nightly slot, back 1 h after it: still within the grace (inclusive).
        (NIGHTLY, "2026-11-30 23:00", "2026-12-01 04:00", "2026-12-01 03:00"),
        # Back a second later: too old, and the slot before it even more so.
        (NIGHTLY, "2026-11-30 23:00", "2026-12-01 04:00:01", None),
        # Down for days: the latest slot is hours old, nothing fires.
        (NIGHTLY, "2026-11-25 12:00", "2026-12-01 12:00", None),
        # Never looked before: only the grace limits.
        (NIGHTLY, None, "2026-12-01 03:20", "2026-12-01 03:00"),
        (NIGHTLY, None, "2026-12-01 05:00", None),
        # The clock went backwards: nothing.
        (NIGHTLY, "2026-12-01 03:10", "2026-12-01 03:05", None),
    ],
)
def test_due_slot(
    expression: str, last_checked: str | None, now: str, expected: str | None
) -> None:
    checked = at(last_checked) if last_checked else None
    due = due_slot(expression, checked, at(now), DEFAULT_GRACE)
    assert due == (at(expected) if expected else None)


def test_grace_is_a_parameter() -> None:
    two_hours = timedelta(hours=2)
    now = at("2026-12-01 04:30")
    assert due_slot(NIGHTLY, None, now) is None
    assert due_slot(NIGHTLY, None, now, two_hours) == at("2026-12-01 03:00")


def test_times_in_other_zones_are_converted() -> None:
    cet = timezone(timedelta(hours=1))
    now = datetime(2026, 12, 1, 4, 0, 30, tzinfo=cet)  # 03:00:30 UTC
    assert due_slot(NIGHTLY, None, now) == at("2026-12-01 03:00")
    assert slot_key("web", datetime(2026, 12, 1, 4, 0, tzinfo=cet)) == "web@2026-12-01T03:00Z"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        due_slot(NIGHTLY, None, datetime(2026, 12, 1, 3, 0))
    with pytest.raises(ValueError, match="last_checked must be timezone-aware"):
        due_slot(NIGHTLY, datetime(2026, 12, 1, 2, 0), at("2026-12-01 03:00"))
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        runs_after(NIGHTLY, datetime(2026, 12, 1), 1)


def scheduler_run(
    expression: str,
    start: datetime,
    end: datetime,
    step: timedelta,
    down: tuple[datetime, datetime],
) -> list[datetime]:
    """A scheduler that looks every ``step`` from ``start`` to ``end`` and is down
    (looks at nothing) during ``down``; returns the slots it fired, in order."""
    fired: list[datetime] = []
    last_checked: datetime | None = None
    now = start
    while now <= end:
        if not down[0] <= now < down[1]:
            slot = due_slot(expression, last_checked, now)
            if slot is not None:
                fired.append(slot)
            last_checked = now
        now += step
    return fired


def test_a_clocked_day_fires_each_slot_once_and_one_missed_slot_after_downtime() -> None:
    start, end = at("2026-12-01 00:00:00"), at("2026-12-01 23:59:59")
    step = timedelta(seconds=7)  # not a divisor of a minute: looks land anywhere
    nothing = (end, end)
    fired = scheduler_run("*/15 * * * *", start, end, step, nothing)
    assert fired == [start + timedelta(minutes=15 * i) for i in range(96)]

    # Down from 06:01 to 09:40: slots 06:15 .. 09:30 are missed; 09:30 fires once at 09:40.
    down = (at("2026-12-01 06:01"), at("2026-12-01 09:40"))
    fired = scheduler_run("*/15 * * * *", start, end, step, down)
    assert at("2026-12-01 09:30") in fired
    assert [s for s in fired if at("2026-12-01 06:00") < s < at("2026-12-01 09:30")] == []
    assert len(fired) == len(set(fired)) == 96 - 13

    # A nightly policy down from 02:00 to 04:30: the 03:00 slot is past the grace, skipped.
    down = (at("2026-12-01 02:00"), at("2026-12-01 04:30"))
    assert scheduler_run(NIGHTLY, start, end, timedelta(minutes=1), down) == []


def test_slot_keys() -> None:
    slot = at("2026-12-01 03:00")
    assert slot_key("web", slot) == "web@2026-12-01T03:00Z"
    assert slot_key("web", slot, "verify") == "web:verify@2026-12-01T03:00Z"
    with pytest.raises(ValueError, match="whole minute"):
        slot_key("web", at("2026-12-01 03:00:30"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3600", timedelta(hours=1)), ("900", timedelta(minutes=15)), ("1h", timedelta(hours=1)),
     ("2d12h", timedelta(hours=60)), (" 90 ", timedelta(seconds=90))],
)  # fmt: skip
def test_parse_grace(text: str, expected: timedelta) -> None:
    assert parse_grace(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30m", "months and years are not allowed"),
        ("1y", "months and years are not allowed"),
        ("0", "longer than 0"),
        ("0h", "longer than 0"),
        ("-5", "must be seconds"),
        ("1.5h", "must be seconds"),
        ("soon", "must be seconds"),
    ],
)
def test_bad_graces(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_grace(text)


def test_grace_from_env() -> None:
    assert grace_from_env({}) == DEFAULT_GRACE == timedelta(hours=1)
    assert grace_from_env({"SNAPARCHIVE_SCHEDULE_GRACE": ""}) == DEFAULT_GRACE
    assert grace_from_env({"SNAPARCHIVE_SCHEDULE_GRACE": "2h"}) == timedelta(hours=2)
    with pytest.raises(ConfigError, match=r"^SNAPARCHIVE_SCHEDULE_GRACE: .*not allowed"):
        grace_from_env({"SNAPARCHIVE_SCHEDULE_GRACE": "30m"})


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "5 fields"),
        ("0 0 3 * * *", "5 fields"),  # cronsim would read a seconds field
        ("@daily", "5 fields"),
        ("61 3 * * *", "not a valid cron expression"),
        ("0 3 * * mon-", "not a valid cron expression"),
        ("0 0 30 2 *", "not a valid cron expression"),  # 30 February never comes
    ],
)
def test_bad_cron_expressions(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_cron(expression)


def test_slot_functions_refuse_bad_expressions() -> None:
    with pytest.raises(ValueError, match=r'not a valid cron expression "61 \* \* \* \*"'):
        runs_after("61 * * * *", at("2026-12-01 00:00"), 1)
    with pytest.raises(ValueError, match="not a valid cron expression"):
        due_slot("0 3 * * xyz", None, at("2026-12-01 03:00"))


def test_good_cron_expressions() -> None:
    for expression in (NIGHTLY, "*/15 * * * *", "0 4 * * sun", "0 0 29 2 *", "30 2 1,15 * *"):
        check_cron(expression)
