"""Rates and ETAs of the progress display: never negative, no wrap past a day."""

import io
import math

import pytest

from worker import progress
from worker.progress import ProgressDisplay, format_eta
from worker.units import MiB

KiB = 1024


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (59.4, "00:00:59"),
        (3 * 3600 + 4 * 60 + 5, "03:04:05"),
        (86399, "23:59:59"),
        (86400, "1d 00:00:00"),
        (86400 + 3 * 3600 + 4 * 60 + 5, "1d 03:04:05"),
        (99 * 86400 + 86399, "99d 23:59:59"),
        (100 * 86400, ">99d"),
        (1e300, ">99d"),
        (None, "--:--"),
        (-1, "--:--"),
        (math.inf, "--:--"),
        (math.nan, "--:--"),
    ],
)
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_an_eta_past_a_day_does_not_wrap(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, every=0)
    display.update(0, 100 * MiB)
    clock[0] += 5
    display.update(5 * KiB, 100 * MiB)
    # 100 MiB - 5 KiB at 1 KiB/s: 102395 s, a day and 4:26:35.
    assert out.getvalue().splitlines()[-1].endswith("1.0 KiB/s ETA 1d 04:26:35")


def test_a_count_that_starts_over_resets_the_rate(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, every=0)
    display.update(0, 100 * MiB)
    clock[0] += 2
    display.update(60 * MiB, 100 * MiB)
    clock[0] += 1
    display.update(10 * MiB, 100 * MiB)  # the transfer resumed from an earlier offset
    clock[0] += 2
    display.update(30 * MiB, 100 * MiB)
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("30.0 MiB/s ETA 00:00:01")
    assert lines[2].endswith("-- B/s ETA --:--")
    assert lines[3].endswith("10.0 MiB/s ETA 00:00:07")


def test_a_new_total_resets_the_rate(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, every=0)
    display.update(0, 100 * MiB)
    clock[0] += 2
    display.update(50 * MiB, 100 * MiB)
    clock[0] += 1
    display.update(55 * MiB, 200 * MiB)  # a new export of another size
    assert out.getvalue().splitlines()[-1].endswith("-- B/s ETA --:--")
