"""Retention (forget): every rule alone and combined, calendar boundaries, ties, groups,
and restic's own scenarios (doc/060_forget.rst, internal/data/snapshot_policy_test.go),
each checked against expectations worked out by hand."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest

from worker.duration import Duration
from worker.retention import REASONS, Candidate, Decision, KeepRules, plan

ALL = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within", "newest")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def archive(
    when: str, snapshot_id: str | None = None, instance: str | None = "i-1", zone: str = "ch-gva-2"
) -> Candidate:
    """An archive whose payload is the time as written, so results read like the tables."""
    return Candidate(zone, instance, snapshot_id or f"s-{when}", at(when), payload=when)


def rules(**kwargs: int | str) -> KeepRules:
    within = kwargs.pop("within", None)
    assert within is None or isinstance(within, str)
    counts = {k: int(v) for k, v in kwargs.items()}
    return KeepRules(within=Duration.parse(within) if within else None, **counts)


def kept(times: list[str], **kwargs: int | str) -> list[tuple[str, tuple[str, ...]]]:
    """Judge one group of archives; the kept ones, newest first, with their reasons."""
    decisions = plan([archive(t) for t in times], rules(**kwargs))
    for d in decisions:
        assert d.keep == bool(d.reasons)
    return [(d.candidate.payload, d.reasons) for d in decisions if d.keep]


# -- each rule alone -------------------------------------------------------------------------

DAYS = [f"2026-11-0{d} 03:00" for d in range(1, 6)]


def test_last() -> None:
    assert kept(DAYS, last=3) == [
        ("2026-11-05 03:00", ("last", "newest")),
        ("2026-11-04 03:00", ("last",)),
        ("2026-11-03 03:00", ("last",)),
    ]
    assert len(kept(DAYS, last=99)) == 5


def test_hourly_uses_calendar_hours() -> None:
    times = ["2026-11-30 10:05", "2026-11-30 10:59:59", "2026-11-30 11:00", "2026-11-30 11:50",
             "2026-11-30 13:00"]  # fmt: skip
    assert kept(times, hourly=2) == [
        ("2026-11-30 13:00", ("hourly", "newest")),
        ("2026-11-30 11:50", ("hourly",)),
    ]
    # 12:00 has no archive and does not count; 10:59:59 is the newest of the 10 o'clock hour.
    assert [t for t, _ in kept(times, hourly=3)] == [
        "2026-11-30 13:00",
        "2026-11-30 11:50",
        "2026-11-30 10:59:59",
    ]


def test_daily() -> None:
    times = ["2026-11-28 02:00", "2026-11-28 22:00", "2026-11-29 00:30", "2026-11-29 23:59:59",
             "2026-11-30 00:00", "2026-11-30 12:00"]  # fmt: skip
    assert kept(times, daily=2) == [
        ("2026-11-30 12:00", ("daily", "newest")),
        ("2026-11-29 23:59:59", ("daily",)),
    ]
    # Only three days have archives: three kept, and no "oldest" extra (see the docstring).
    assert [t for t, _ in kept(times, daily=5)] == [
        "2026-11-30 12:00",
        "2026-11-29 23:59:59",
        "2026-11-28 22:00",
    ]


def test_weekly_iso_weeks_end_on_sunday_night() -> None:
    # Saturday and Sunday 23:59 are ISO week 48; the Monday after, 00:00, is week 49.
    times = ["2026-11-28 12:00", "2026-11-29 23:59", "2026-11-30 00:00"]
    assert kept(times, weekly=2) == [
        ("2026-11-30 00:00", ("weekly", "newest")),
        ("2026-11-29 23:59", ("weekly",)),
    ]
    assert kept(times, weekly=1) == [("2026-11-30 00:00", ("weekly", "newest"))]


def test_weeks_without_archives_do_not_count() -> None:
    # Weeks 45, 47 and 49 of 2026; 46 and 48 are empty.
    times = ["2026-11-02 03:00", "2026-11-16 03:00", "2026-11-30 03:00"]
    assert [t for t, _ in kept(times, weekly=2)] == ["2026-11-30 03:00", "2026-11-16 03:00"]


def test_iso_week_years_are_not_calendar_years() -> None:
    # 2015-12-27 (Sunday) is 2015-W52; 28 December 2015 to 3 January 2016 is 2015-W53;
    # 2016-01-04 (Monday) is 2016-W01. The calendar year still ends on 31 December.
    times = ["2015-12-27 10:00", "2015-12-28 10:00", "2016-01-01 10:00", "2016-01-03 10:00",
             "2016-01-04 10:00"]  # fmt: skip
    assert kept(times, weekly=3, yearly=2) == [
        ("2016-01-04 10:00", ("weekly", "yearly", "newest")),
        ("2016-01-03 10:00", ("weekly",)),
        ("2015-12-28 10:00", ("yearly",)),
        ("2015-12-27 10:00", ("weekly",)),
    ]


def test_monthly() -> None:
    times = ["2026-01-31 23:59:59", "2026-02-01 00:00", "2026-02-28 12:00", "2026-03-15 12:00"]
    assert kept(times, monthly=2) == [
        ("2026-03-15 12:00", ("monthly", "newest")),
        ("2026-02-28 12:00", ("monthly",)),
    ]
    assert [t for t, _ in kept(times, monthly=3)][-1] == "2026-01-31 23:59:59"


def test_yearly_across_new_year() -> None:
    times = ["2024-12-31 23:59:59", "2025-01-01 00:00", "2025-06-01 00:00", "2026-01-01 00:00"]
    assert kept(times, yearly=2) == [
        ("2026-01-01 00:00", ("yearly", "newest")),
        ("2025-06-01 00:00", ("yearly",)),
    ]
    assert kept(times, yearly=3)[-1] == ("2024-12-31 23:59:59", ("yearly",))


@pytest.mark.parametrize(
    ("newest", "cutoff"),
    [
        # 31 March minus one month is "31 February": 3 March, or 2 March in a leap year.
        ("2026-03-31 12:00", "2026-03-03 12:00"),
        ("2024-03-31 12:00", "2024-03-02 12:00"),
        ("2026-03-15 12:00", "2026-02-15 12:00"),
        ("2026-01-31 12:00", "2025-12-31 12:00"),
    ],
)
def test_within_a_month_across_month_ends(newest: str, cutoff: str) -> None:
    just_after = (at(cutoff) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    a_day_before = (at(cutoff) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    times = [a_day_before, cutoff, just_after, newest]
    # Strictly after the cutoff, as restic: the archive exactly one month older goes.
    assert kept(times, within="1m") == [(newest, ("within", "newest")), (just_after, ("within",))]


def test_within_counts_from_the_newest_archive_not_from_now() -> None:
    times = ["2019-01-01 00:00", "2019-01-05 00:00", "2019-01-07 00:00"]
    assert kept(times, within="5d") == [
        ("2019-01-07 00:00", ("within", "newest")),
        ("2019-01-05 00:00", ("within",)),
    ]
    assert len(kept(times, within="1y")) == 3


def test_the_newest_is_kept_whatever_the_rules_say() -> None:
    assert kept(DAYS, daily=0) == [("2026-11-05 03:00", ("newest",))]
    assert kept(DAYS) == [("2026-11-05 03:00", ("newest",))]
    assert kept(["2026-11-05 03:00"], last=3, within="1d") == [
        ("2026-11-05 03:00", ("last", "within", "newest"))
    ]


# -- combined ----------------------------------------------------------------------------------


def test_every_rule_together() -> None:
    times = [
        "2026-11-30 13:00",  # Monday, ISO week 49
        "2026-11-30 09:00",
        "2026-11-29 23:00",  # Sunday, week 48
        "2026-11-29 08:00",
        "2026-11-25 03:00",  # week 48, before the within cutoff (25 Nov 13:00)
        "2026-11-02 03:00",  # week 45
        "2026-10-31 03:00",
        "2026-10-15 03:00",
        "2025-12-31 03:00",
        "2025-06-01 03:00",
    ]
    result = plan(
        [archive(t) for t in reversed(times)],
        rules(last=2, hourly=3, daily=2, weekly=3, monthly=3, yearly=2, within="5d"),
    )
    assert [(d.candidate.payload, d.action, d.reasons) for d in result] == [
        ("2026-11-30 13:00", "keep", ALL),
        ("2026-11-30 09:00", "keep", ("last", "hourly", "within")),
        ("2026-11-29 23:00", "keep", ("hourly", "daily", "weekly", "within")),
        ("2026-11-29 08:00", "keep", ("within",)),
        ("2026-11-25 03:00", "remove", ()),
        ("2026-11-02 03:00", "keep", ("weekly",)),
        ("2026-10-31 03:00", "keep", ("monthly",)),
        ("2026-10-15 03:00", "remove", ()),
        ("2025-12-31 03:00", "keep", ("monthly", "yearly")),
        ("2025-06-01 03:00", "remove", ()),
    ]
    assert REASONS == ALL


# -- ties, groups, archives without an instance -------------------------------------------------


def test_ties_are_broken_by_snapshot_id_whatever_the_input_order() -> None:
    archives = [
        archive("2026-11-30 03:00", "snap-b"),
        archive("2026-11-30 03:00", "snap-a"),
        archive("2026-11-29 03:00", "snap-c"),
    ]
    cases = [
        (rules(daily=2), [("daily", "newest"), (), ("daily",)]),
        (rules(last=2), [("last", "newest"), ("last",), ()]),
        (rules(within="1d"), [("within", "newest"), ("within",), ()]),
    ]
    for keep, reasons in cases:
        expected = list(zip(["snap-a", "snap-b", "snap-c"], reasons, strict=True))
        for order in itertools.permutations(archives):
            result = [(d.candidate.snapshot_id, d.reasons) for d in plan(order, keep)]
            assert result == expected, keep


def test_groups_are_judged_alone_in_a_stable_order() -> None:
    archives = [
        archive("2026-11-29 03:00", "s1", "i-1"),
        archive("2026-11-30 03:00", "s2", "i-1"),
        archive("2026-11-28 03:00", "s3", "i-2"),
        archive("2026-11-27 03:00", "s4", "i-2"),
        archive("2026-11-30 03:00", "s5", "i-1", zone="at-vie-1"),  # same id, other zone
        archive("2026-01-01 03:00", "s6", None),  # archived ad hoc: instance unknown
        archive("2026-06-01 03:00", "s7", None),
    ]
    expected = [
        ("at-vie-1", "i-1", "s5", "keep", ("last", "newest")),
        ("ch-gva-2", "i-1", "s2", "keep", ("last", "newest")),
        ("ch-gva-2", "i-1", "s1", "remove", ()),
        ("ch-gva-2", "i-2", "s3", "keep", ("last", "newest")),
        ("ch-gva-2", "i-2", "s4", "remove", ()),
        ("ch-gva-2", None, "s7", "keep", ("no-instance",)),
        ("ch-gva-2", None, "s6", "keep", ("no-instance",)),
    ]
    for shift in range(len(archives)):
        shuffled = archives[shift:] + archives[:shift]
        result = [
            (
                d.candidate.zone,
                d.candidate.instance_id,
                d.candidate.snapshot_id,
                d.action,
                d.reasons,
            )
            for d in plan(shuffled, rules(last=1))
        ]
        assert result == expected


def test_archives_without_an_instance_are_never_removed() -> None:
    archives = [archive(f"2026-11-{d:02d} 03:00", instance=None) for d in range(1, 11)]
    decisions = plan(archives, rules(last=1))
    assert [d.reasons for d in decisions] == [("no-instance",)] * 10


def test_decision_as_dict_and_naive_times() -> None:
    decision = plan([archive("2026-11-30 03:00:00")], rules(daily=1))[0]
    assert isinstance(decision, Decision)
    assert decision.as_dict() == {
        "zone": "ch-gva-2",
        "instance_id": "i-1",
        "snapshot_id": "s-2026-11-30 03:00:00",
        "created_at": "2026-11-30T03:00:00Z",
        "action": "keep",
        "reasons": ["daily", "newest"],
    }
    naive = Candidate("ch-gva-2", "i-1", "s-1", datetime(2026, 11, 30, 3, 0))
    with pytest.raises(ValueError, match="s-1: created_at must be timezone-aware"):
        plan([naive], rules(last=1))
    assert plan([], rules(last=1)) == []


# -- restic's scenarios --------------------------------------------------------------------------


def restic_snapshots() -> list[str]:
    """The snapshot times of restic's TestApplyPolicy (internal/data/snapshot_policy_test.go),
    all UTC: August and November on the same days, September and October on the same days,
    of 2014 and 2015; 2015-10-22 five times; then January 2016."""
    aug_nov = ["08", "10", "12", "13", "13.1", "15", "18", "20", "21", "22"]
    sep_oct = ["01", "02", "05", "06", "08", "09", "10", "11", "20", "22"]
    times = []
    for year in ("2014", "2015"):
        for month, days in (("08", aug_nov), ("09", sep_oct), ("10", sep_oct), ("11", aug_nov)):
            for day in days:
                fraction = ".100" if day.endswith(".1") else ""
                times.append(f"{year}-{month}-{day[:2]} 10:20:30{fraction}")
    times += ["2015-10-22 10:20:30"] * 4
    times += [
        "2016-01-01 01:02:03", "2016-01-01 01:03:03", "2016-01-01 07:08:03",
        "2016-01-03 07:02:03", "2016-01-04 10:23:03", "2016-01-04 11:23:03",
        "2016-01-04 12:23:03", "2016-01-04 12:24:03", "2016-01-04 12:28:03",
        "2016-01-04 12:30:03", "2016-01-04 16:23:03", "2016-01-05 09:02:03",
        "2016-01-06 08:02:03", "2016-01-07 10:02:03", "2016-01-08 20:02:03",
        "2016-01-09 21:02:03", "2016-01-12 21:02:03", "2016-01-12 21:08:03",
        "2016-01-18 12:02:03",
    ]  # fmt: skip
    return times


def restic_kept(**kwargs: int | str) -> list[tuple[str, tuple[str, ...]]]:
    archives = [archive(t, f"r{i:03d}") for i, t in enumerate(restic_snapshots())]
    return [(d.candidate.payload, d.reasons) for d in plan(archives, rules(**kwargs)) if d.keep]


def test_restic_last_10() -> None:
    assert [t for t, _ in restic_kept(last=10)] == [
        "2016-01-18 12:02:03", "2016-01-12 21:08:03", "2016-01-12 21:02:03",
        "2016-01-09 21:02:03", "2016-01-08 20:02:03", "2016-01-07 10:02:03",
        "2016-01-06 08:02:03", "2016-01-05 09:02:03", "2016-01-04 16:23:03",
        "2016-01-04 12:30:03",
    ]  # fmt: skip


def test_restic_daily_10() -> None:
    assert [t for t, _ in restic_kept(daily=10)] == [
        "2016-01-18 12:02:03", "2016-01-12 21:08:03", "2016-01-09 21:02:03",
        "2016-01-08 20:02:03", "2016-01-07 10:02:03", "2016-01-06 08:02:03",
        "2016-01-05 09:02:03", "2016-01-04 16:23:03", "2016-01-03 07:02:03",
        "2016-01-01 07:08:03",
    ]  # fmt: skip


def test_restic_weekly_4_crosses_iso_week_53() -> None:
    # 2016-01-03 (Sunday) and 2016-01-01 are in 2015-W53, whose newest is 01-03.
    assert [t for t, _ in restic_kept(weekly=4)] == [
        "2016-01-18 12:02:03", "2016-01-12 21:08:03", "2016-01-09 21:02:03",
        "2016-01-03 07:02:03",
    ]  # fmt: skip


def test_restic_monthly_6_skips_empty_months() -> None:
    # December 2015 and every month from December 2014 to July 2015 have no snapshot.
    assert [t for t, _ in restic_kept(monthly=6)] == [
        "2016-01-18 12:02:03", "2015-11-22 10:20:30", "2015-10-22 10:20:30",
        "2015-09-22 10:20:30", "2015-08-22 10:20:30", "2014-11-22 10:20:30",
    ]  # fmt: skip


def test_restic_daily_2_weekly_2_monthly_6() -> None:
    # restic's golden file policy_keep_snapshots_15, reasons included.
    assert restic_kept(daily=2, weekly=2, monthly=6) == [
        ("2016-01-18 12:02:03", ("daily", "weekly", "monthly", "newest")),
        ("2016-01-12 21:08:03", ("daily", "weekly")),
        ("2015-11-22 10:20:30", ("monthly",)),
        ("2015-10-22 10:20:30", ("monthly",)),
        ("2015-09-22 10:20:30", ("monthly",)),
        ("2015-08-22 10:20:30", ("monthly",)),
        ("2014-11-22 10:20:30", ("monthly",)),
    ]


def test_restic_yearly_10_keeps_no_oldest() -> None:
    # restic >= 0.17 also keeps 2014-08-08 as "oldest yearly snapshot" (count left over);
    # issue 11 does not ask for that, and this module does not do it.
    assert restic_kept(yearly=10) == [
        ("2016-01-18 12:02:03", ("yearly", "newest")),
        ("2015-11-22 10:20:30", ("yearly",)),
        ("2014-11-22 10:20:30", ("yearly",)),
    ]


def test_restic_within_1y2m3d3h() -> None:
    # restic's golden file policy_keep_snapshots_29: 2016-01-18 12:02:03 minus 1y2m3d3h is
    # 2014-11-15 09:02:03; everything after it stays, the 35 snapshots before it go.
    all_times = restic_snapshots()
    result = restic_kept(within="1y2m3d3h")
    assert result[-1] == ("2014-11-15 10:20:30", ("within",))
    assert len(all_times) - len(result) == 35
    assert {t for t, _ in result} == {t for t in all_times if t >= "2014-11-15"}


def test_restic_doc_twelve_sundays_keep_daily_4() -> None:
    sundays = [(date(2019, 9, 1) + timedelta(weeks=w)).isoformat() + " 11:00" for w in range(12)]
    assert kept(sundays, daily=4) == [
        ("2019-11-17 11:00", ("daily", "newest")),
        ("2019-11-10 11:00", ("daily",)),
        ("2019-11-03 11:00", ("daily",)),
        ("2019-10-27 11:00", ("daily",)),
    ]


def test_restic_doc_a_hundred_years_of_daily_backups() -> None:
    # "one backup every day for 100 years, forget --keep-daily 7 --keep-weekly 5
    # --keep-monthly 12 --keep-yearly 75": 7 dailies, 4 more weeklies (the dailies include
    # one), 11 more monthlies (one is a daily), yearlies for the rest. Ending on Sunday
    # 2019-11-17, the yearly of 2018 (31 December) is also a monthly: 73 more yearlies.
    first, last = date(1919, 11, 18), date(2019, 11, 17)
    count = (last - first).days + 1
    days = [(first + timedelta(days=n)).isoformat() + " 11:00" for n in range(count)]
    result = dict(kept(days, daily=7, weekly=5, monthly=12, yearly=75))
    daily = [f"2019-11-{d} 11:00" for d in range(17, 10, -1)]
    weekly_only = ["2019-11-10 11:00", "2019-11-03 11:00", "2019-10-27 11:00", "2019-10-20 11:00"]
    month_ends = ["2019-10-31", "2019-09-30", "2019-08-31", "2019-07-31", "2019-06-30",
                  "2019-05-31", "2019-04-30", "2019-03-31", "2019-02-28", "2019-01-31"]  # fmt: skip
    year_ends = [f"{y}-12-31 11:00" for y in range(2017, 1944, -1)]
    assert len(result) == 7 + 4 + 11 + 73
    assert result[daily[0]] == ("daily", "weekly", "monthly", "yearly", "newest")
    assert all(result[t] == ("daily",) for t in daily[1:7])
    assert all(result[t] == ("weekly",) for t in weekly_only)
    assert all(result[t + " 11:00"] == ("monthly",) for t in month_ends)
    assert result["2018-12-31 11:00"] == ("monthly", "yearly")
    assert all(result[t] == ("yearly",) for t in year_ends)
    assert Counter(r for reasons in result.values() for r in reasons) == {
        "daily": 7, "weekly": 5, "monthly": 12, "yearly": 75, "newest": 1,
    }  # fmt: skip
