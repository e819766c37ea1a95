"""The default timings keep a killed worker's job waiting seconds, not minutes."""

from __future__ import annotations

from jobs.watch import LEASE_MARGIN
from worker.settings import MIN_LEASE_TTL, load

#: Seconds a dead worker's job may wait before another worker downloads again (issue 14).
TARGET = 20
#: Dramatiq's idle consumers poll at most this far apart (worker_timeout, 1 s): the delayed
#: message that looks at the lease again waits for one poll of the delay queue and one of the
#: queue.
POLL = 1.0


def test_defaults_recover_a_killed_worker_s_job_within_the_target() -> None:
    settings = load({})
    # The message is back after the heartbeat timeout; the lease, renewed every third of its
    # TTL, has at most its whole TTL left at the kill; then one margin and two polls.
    worst = max(settings.heartbeat_timeout, settings.lease_ttl) + LEASE_MARGIN + 2 * POLL
    assert worst <= TARGET
    assert settings.lease_ttl >= MIN_LEASE_TTL
    # A live worker beats at least once a second: ten beats may be missed before it is dead.
    assert settings.heartbeat_timeout >= 10 * POLL
