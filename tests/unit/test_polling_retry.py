"""The official polling schedule and the backoff policy."""

from __future__ import annotations

import pytest

from worker.polling import poll_interval
from worker.retry import RetryPolicy, parse_retry_after


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, 3.0),
        (30, 3.0),
        (60, 4.97),
        (120, 8.90),
        (300, 20.69),
        (600, 40.34),
        (900, 60.0),
        (5000, 60.0),
    ],
)
def test_poll_interval_follows_python_exoscale(elapsed: float, expected: float) -> None:
    from exoscale.api.v2 import _poll_interval

    assert poll_interval(elapsed) == pytest.approx(expected, abs=0.01)
    assert poll_interval(elapsed) == pytest.approx(_poll_interval(elapsed))


def test_backoff_is_capped_and_retry_after_wins() -> None:
    policy = RetryPolicy(attempts=5, base=1.0, cap=8.0)
    assert 0.5 <= policy.delay(1) <= 1.0
    assert 4.0 <= policy.delay(4) <= 8.0
    assert 4.0 <= policy.delay(30) <= 8.0
    assert policy.delay(1, retry_after=3) == 3
    assert policy.delay(1, retry_after=100) == 8.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
