"""Schedulers side by side over real Redis, under a controlled clock (issue 11): each slot
fires once, a standby takes over from a dead leader, missed slots fire once after downtime."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.integration.pipeline_env import SNAPARCHIVE, forget_queue, pipeline_env
from worker.jobstore import RedisJobStore
from worker.policy import loads
from worker.scheduler import Scheduler

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/11"
POLICIES = loads(
    """
[[policy]]
name = "hourly"
zone = "ch-gva-2"
instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]
schedule = "0 * * * *"
snapshots_keep = 1
[policy.keep]
last = 1

[[policy]]
name = "nightly"
zone = "ch-gva-2"
instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]
schedule = "30 3 * * *"
snapshots_keep = 1
[policy.keep]
last = 1
"""
)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
async def store():
    jobs = RedisJobStore(REDIS_URL, namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield jobs
    keys = [key async for key in jobs.redis.scan_iter(f"{jobs.ns}:*")]
    if keys:
        await jobs.redis.delete(*keys)
    await jobs.close()


def _schedulers(store, clock, fired, count=2, leader_ttl=15.0):
    async def fire(policy, slot, key, kind):
        fired.append(key)

    return [
        Scheduler(store, POLICIES, fire, f"host-{n}", clock=clock, leader_ttl=leader_ttl)
        for n in range(count)
    ]


async def test_side_by_side_each_slot_fires_exactly_once(store):
    clock = Clock(datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC))
    fired: list[str] = []
    schedulers = _schedulers(store, clock, fired)
    # A day in ticks of 17 seconds, every scheduler looking at each tick.
    for _ in range(24 * 3600 // 17):
        for scheduler in schedulers:
            await scheduler.tick()
        clock.advance(seconds=17)
    hourly = [k for k in fired if k.startswith("hourly@")]
    start = datetime(2026, 12, 1, tzinfo=UTC)
    every_hour = [f"hourly@{start + timedelta(hours=h):%Y-%m-%dT%H:%M}Z" for h in range(25)]
    assert hourly == every_hour  # the day's 24 slots and the next midnight, once each
    assert [k for k in fired if k.startswith("nightly@")] == ["nightly@2026-12-01T03:30Z"]
    assert sum(s.leading for s in schedulers) == 1


async def test_a_standby_takes_over_when_the_leader_dies(store):
    clock = Clock(datetime(2026, 12, 1, 0, 59, 50, tzinfo=UTC))
    fired: list[str] = []
    leader, standby = _schedulers(store, clock, fired, leader_ttl=1.0)
    await leader.tick()
    await standby.tick()
    assert (leader.leading, standby.leading) == (True, False)
    # The leader dies (it looks no more, and never releases its lease).
    clock.advance(seconds=20)  # 01:00:10: the 01:00 slot is due
    assert await standby.tick() == []  # the dead leader's lease still runs
    await asyncio.sleep(1.2)  # ... a lease's life (1 s here; 15 s by default)
    assert await standby.tick() == ["hourly@2026-12-01T01:00Z"]
    assert standby.leading


async def test_after_downtime_only_the_latest_missed_slot_fires_within_the_grace(store):
    clock = Clock(datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    fired: list[str] = []
    (scheduler,) = _schedulers(store, clock, fired, count=1)
    await scheduler.tick()
    assert fired == ["hourly@2026-12-01T00:00Z"]
    # Down for five hours: of the five missed hourly slots only the latest fires, once; the
    # nightly 03:30 slot is older than the grace (1 h) at 05:10, so it does not fire.
    clock.advance(hours=5)  # 05:10
    await scheduler.tick()
    await scheduler.tick()
    assert fired[1:] == ["hourly@2026-12-01T05:00Z"]
    clock.advance(days=1)  # the next day, 05:10
    fired.clear()
    await scheduler.tick()
    assert fired == ["hourly@2026-12-02T05:00Z"]


def test_the_scheduler_command_stops_cleanly_on_sigterm(
    simulator, moto_endpoint, s3_bucket, tmp_path
):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    policies = tmp_path / "snaparchive.toml"
    policies.write_text(
        '[[policy]]\nname = "web"\nzone = "ch-gva-2"\n'
        'instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]\nschedule = "0 3 * * *"\n'
        "snapshots_keep = 1\n[policy.keep]\nlast = 1\n"
    )
    env["SNAPARCHIVE_POLICIES"] = str(policies)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [SNAPARCHIVE, "scheduler", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "snaparchive scheduler: web" in (process.stdout.readline() if process.stdout else "")
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "snaparchive_jobs_total" in scraped
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        forget_queue(env)
    assert process.returncode == 0, err
    assert "Traceback" not in err


async def test_a_policy_s_scrub_has_slots_of_its_own(store):
    policies = loads(
        """
[[policy]]
name = "web"
zone = "ch-gva-2"
instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]
schedule = "0 3 * * *"
verify = "0 4 * * 0"
verify_subset = "1/4"
snapshots_keep = 1
[policy.keep]
last = 1
"""
    )
    clock = Clock(datetime(2026, 11, 30, 0, 0, 30, tzinfo=UTC))  # a Monday
    fired: list[tuple[str, str]] = []

    async def fire(policy, slot, key, kind):
        fired.append((key, kind))

    scheduler = Scheduler(store, policies, fire, "host", clock=clock)
    for _ in range(7 * 24 * 60 // 7):  # a week, looking every 7 minutes
        await scheduler.tick()
        clock.advance(minutes=7)
    scrubs = [item for item in fired if item[1] == "verify"]
    assert scrubs == [("web:verify@2026-12-06T04:00Z", "verify")]
    assert len([item for item in fired if item[1] == "backup"]) == 7
