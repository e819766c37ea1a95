"""What counts as a byte read again after a resume."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from worker import metrics
from worker.units import MiB

PART = 5 * MiB


def _reread_total() -> float:
    metrics.reread(0)  # the collector exists from here on
    return REGISTRY.get_sample_value("snaparchive_reread_bytes_total") or 0.0


def _run(meter: metrics.RereadMeter, offsets: list[int]) -> list[int]:
    seen: list[int] = []
    meter.on_progress = lambda offset, total: seen.append(offset)
    for offset in offsets:
        meter(offset, 100 * MiB)
    return seen


@pytest.mark.parametrize(
    ("resumed_from", "furthest", "offsets", "again"),
    [
        # A first run: nothing was read before.
        (0, 0, [MiB, 3 * MiB, 12 * MiB], 0),
        # Resumed from the checkpoint at 10 MiB; an earlier run had read up to 13 MiB.
        (2 * PART, 13 * MiB, [2 * PART + MiB, 12 * MiB, 14 * MiB, 20 * MiB], 3 * MiB),
        # The checkpoint could not be continued (the MD5 state): read again from 0.
        (2 * PART, 13 * MiB, [MiB, 8 * MiB, 20 * MiB], 13 * MiB),
        # Stopped again before reaching where the earlier run was.
        (PART, 20 * MiB, [PART + MiB, 9 * MiB], 4 * MiB),
    ],
)
def test_bytes_below_the_furthest_point_count_as_read_again(resumed_from, furthest, offsets, again):
    before = _reread_total()
    meter = metrics.RereadMeter(lambda offset, total: None, resumed_from, furthest)
    assert _run(meter, offsets) == offsets  # passed on, every one
    assert _reread_total() - before == again
