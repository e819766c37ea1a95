"""Durations in the 1y2m3d4h syntax and restic's calendar arithmetic (Go's AddDate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.duration import Duration


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("30d", Duration(days=30), "30d"),
        ("1y2m3d4h", Duration(1, 2, 3, 4), "1y2m3d4h"),
        ("1y1d1m", Duration(years=1, months=1, days=1), "1y1m1d"),  # restic's order-free form
        ("36h", Duration(hours=36), "36h"),
        (" 2m ", Duration(months=2), "2m"),
        ("0d", Duration(), "0h"),
    ],
)
def test_parse_and_print(text: str, expected: Duration, canonical: str) -> None:
    assert Duration.parse(text) == expected
    assert str(expected) == canonical


@pytest.mark.parametrize("text", ["", "30", "d", "1w", "1d1d", "-1d", "1.5d", "1 d", "1D", "30min"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|twice"):
        Duration.parse(text)


def test_a_duration_must_be_text() -> None:
    with pytest.raises(ValueError, match="must be a duration string"):
        Duration.parse(30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("moment", "duration", "expected"),
    [
        # A plain month back.
        ("2026-03-15 12:00", "1m", "2026-02-15 12:00"),
        # "31 February" rolls over into March, as Go's time.AddDate does in restic.
        ("2026-03-31 12:00", "1m", "2026-03-03 12:00"),
        ("2024-03-31 12:00", "1m", "2024-03-02 12:00"),  # a leap year: 29 days in February
        ("2026-03-31 12:00", "1m1d", "2026-03-02 12:00"),  # one normalisation for both fields
        ("2026-01-31 00:00", "1m", "2025-12-31 00:00"),  # across a year end
        ("2024-02-29 06:00", "1y", "2023-03-01 06:00"),
        ("2026-05-31 00:00", "3m", "2026-03-03 00:00"),  # "31 February" again, 3 months back
        ("2026-03-01 02:00", "3h", "2026-02-28 23:00"),  # hours are absolute
        # restic's golden test: 2016-01-18 12:02:03 minus 1y2m3d3h.
        ("2016-01-18 12:02:03", "1y2m3d3h", "2014-11-15 09:02:03"),
    ],
)
def test_before_uses_calendar_arithmetic(moment: str, duration: str, expected: str) -> None:
    assert Duration.parse(duration).before(at(moment)) == at(expected)


def test_before_far_in_the_past_is_the_earliest_datetime() -> None:
    assert Duration(years=99999).before(at("2026-01-01")) == datetime.min.replace(tzinfo=UTC)
    assert Duration(hours=10**9).before(at("2026-01-01")) == datetime.min.replace(tzinfo=UTC)


def test_fixed_durations_convert_to_timedelta() -> None:
    assert Duration.parse("2d12h").to_timedelta() == timedelta(hours=60)
    assert Duration.parse("1m").is_fixed is False
    with pytest.raises(ValueError, match="no fixed length"):
        Duration.parse("1y").to_timedelta()
