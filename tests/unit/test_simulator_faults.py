"""Fault specs: validation, counting, and the plan of each download response."""

from __future__ import annotations

import pytest

from worker.simulator.faults import ActiveFaults, DownloadPlan, Faults


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_errors": -1}, "api_errors"),
        ({"api_errors": True}, "api_errors"),
        ({"api_error_status": 404}, "500..599"),
        ({"failure_reason": "oops"}, "failure_reason"),
        ({"export_stuck": "yes"}, "export_stuck"),
        ({"url_ttl": -1}, "url_ttl"),
        ({"slow_rate": 0}, "slow_rate"),
        ({"truncate_at": -5}, "truncate_at"),
        ({"quota_errors": -1}, "quota_errors"),
        ({"register_unreachable": 1.5}, "register_unreachable"),
        ({"register_mismatch": False}, "register_mismatch"),
        ({"register_stuck": 1}, "register_stuck"),
        ({"register_seconds": -1}, "register_seconds"),
        ({"register_seconds": float("nan")}, "register_seconds"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(values, message):
    with pytest.raises(ValueError, match=message):
        Faults(**values)


def test_from_dict_accepts_dashes_and_refuses_unknown_fields():
    assert Faults.from_dict({"api-errors": 2, "wrong_md5": True}) == Faults(
        api_errors=2, wrong_md5=True
    )
    with pytest.raises(ValueError, match="unknown fault field"):
        Faults.from_dict({"explode": True})
    assert Faults.from_dict(Faults(reset_at=3).to_dict()) == Faults(reset_at=3)


def test_api_faults_count_down_errors_first():
    active = ActiveFaults(Faults(api_errors=1, rate_limits=1, retry_after=4))
    assert active.take_api_fault() == (503, {})
    assert active.take_api_fault() == (429, {"Retry-After": "4"})
    assert active.take_api_fault() is None


def test_export_failures_count_down():
    active = ActiveFaults(Faults(export_failures=2, failure_reason="busy"))
    assert [active.take_export_failure() for _ in range(3)] == ["busy", "busy", None]


def test_quota_errors_count_down():
    active = ActiveFaults(Faults(quota_errors=1))
    assert [active.take_quota_error() for _ in range(2)] == [True, False]


def test_registration_faults_count_down_unreachable_first():
    active = ActiveFaults(Faults(register_unreachable=1, register_mismatch=1))
    spent = [active.take_registration_faults() for _ in range(3)]
    assert spent == [(True, False), (False, True), (False, False)]


def test_download_faults_fire_only_in_range_and_then_are_spent():
    active = ActiveFaults(Faults(truncate_at=100, corrupt_at=50, slow_rate=10))
    assert active.take_download_plan(200, 300) == DownloadPlan(rate=10)
    assert active.take_download_plan(0, 1000) == DownloadPlan(cut_at=100, corrupt_at=50, rate=10)
    assert active.take_download_plan(0, 1000) == DownloadPlan(rate=10)


def test_the_earlier_cut_wins_and_the_other_waits():
    active = ActiveFaults(Faults(truncate_at=500, reset_at=100))
    assert active.take_download_plan(0, 1000) == DownloadPlan(cut_at=100, reset=True)
    assert active.take_download_plan(0, 1000) == DownloadPlan(cut_at=500)
    assert active.take_download_plan(0, 1000) == DownloadPlan()


def test_corruption_beyond_the_cut_is_not_spent():
    active = ActiveFaults(Faults(truncate_at=10, corrupt_at=20))
    assert active.take_download_plan(0, 100) == DownloadPlan(cut_at=10)
    assert active.take_download_plan(10, 100) == DownloadPlan(corrupt_at=20)


def test_unlimited_download_faults():
    active = ActiveFaults(Faults(reset_at=0, download_fault_times=None))
    for _ in range(5):
        assert active.take_download_plan(0, 10) == DownloadPlan(cut_at=0, reset=True)
