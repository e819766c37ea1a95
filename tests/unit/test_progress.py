import io

import pytest

from worker import progress
from worker.progress import ProgressDisplay
from worker.units import MiB


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_plain_lines_show_rate_and_eta(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, every=0)
    display.update(0, 100 * MiB)
    clock[0] += 2
    display.update(20 * MiB, 100 * MiB)
    first, second = out.getvalue().splitlines()
    assert first.endswith("-- B/s ETA --:--")
    assert "20.0%" in second and "10.0 MiB/s" in second and "ETA 00:00:08" in second


def test_a_finished_transfer_says_committing(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, every=0)
    display.update(100 * MiB, 100 * MiB)
    assert out.getvalue().rstrip().endswith("-- B/s committing")


def test_a_terminal_gets_one_redrawn_line(clock):
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=True)
    display.update(MiB, 4 * MiB)
    clock[0] += 1
    display.update(2 * MiB, 4 * MiB)
    display.close()
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == 4 and text.endswith(" \r")
