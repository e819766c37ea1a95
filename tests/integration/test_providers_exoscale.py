"""The Exoscale adapter against the Exoscale simulator over real HTTP."""

from __future__ import annotations

import pytest

from worker import errors
from worker.providers.base import NotARegion
from worker.providers.exoscale import Exoscale
from worker.retry import RetryPolicy
from worker.settings import EXOSCALE_ZONES, ExoscaleSettings
from worker.simulator import Faults, Simulator
from worker.units import GiB, MiB

FAST = RetryPolicy(attempts=3, base=0.001, cap=0.01)
ID_A = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
ID_B = "7b2d3c5f-4a6e-4f8b-8c9d-1e2f3a4b5c6d"
ID_C = "8c3e4d6a-5b7f-4a9c-9d0e-2f3a4b5c6d7e"


async def test_lists_every_zone_with_sizes_in_bytes(simulator: Simulator) -> None:
    simulator.add_snapshot(ID_A, MiB, zone="ch-gva-2", size_gib=20, instance_id=ID_C)
    simulator.add_snapshot(ID_B, MiB, zone="de-fra-1", state="snapshotting")
    simulator.add_snapshot(ID_C, MiB, zone="de-fra-1", state="exported")
    async with Exoscale(simulator.settings(), retry=FAST) as api:
        records = {r.id: r for r in await api.list_snapshots()}
    assert set(records) == {ID_A, ID_B, ID_C}
    a, b, c = records[ID_A], records[ID_B], records[ID_C]
    assert (a.provider, a.region, a.status, a.size_bytes, a.source_id) == (
        "exoscale",
        "ch-gva-2",
        "ready",
        20 * GiB,
        ID_C,
    )
    assert a.created_at is not None and a.created_at.tzinfo is not None
    assert (b.region, b.status, b.raw_status) == ("de-fra-1", "creating", "snapshotting")
    assert (c.status, c.raw_status) == ("ready", "exported")
    assert "presigned-url" not in c.raw["export"]  # a credential: never in records


async def test_one_zone(simulator: Simulator) -> None:
    simulator.add_snapshot(ID_A, MiB, zone="ch-gva-2")
    simulator.add_snapshot(ID_B, MiB, zone="at-vie-1")
    async with Exoscale(simulator.settings(), retry=FAST) as api:
        assert [r.id for r in await api.list_snapshots("at-vie-1")] == [ID_B]
        assert await api.list_snapshots("bg-sof-1") == []


async def test_server_errors_are_retried(simulator: Simulator) -> None:
    simulator.add_snapshot(ID_A, MiB)
    simulator.set_faults(Faults(api_errors=1, rate_limits=1, retry_after=0))
    async with Exoscale(simulator.settings(), retry=FAST) as api:
        assert [r.id for r in await api.list_snapshots("ch-gva-2")] == [ID_A]


async def test_a_failing_zone_fails_the_all_zones_listing(simulator: Simulator) -> None:
    simulator.set_faults(Faults(api_errors=1))
    async with Exoscale(simulator.settings(), retry=RetryPolicy(attempts=1)) as api:
        with pytest.raises(errors.ServerError, match=r"^exoscale: GET /.*HTTP 503"):
            await api.list_snapshots()


async def test_wrong_secret_is_an_auth_error(simulator: Simulator) -> None:
    settings = ExoscaleSettings(key=simulator.key, secret="wrong", endpoint=simulator.endpoint)
    async with Exoscale(settings, retry=FAST) as api:
        with pytest.raises(
            errors.AuthError, match=r"^exoscale: GET /ch-gva-2/v2/snapshot: HTTP 40"
        ):
            await api.list_snapshots("ch-gva-2")


def test_regions_are_exoscale_zones() -> None:
    api = Exoscale(ExoscaleSettings(key="EXOkey", secret="secret"))
    assert api.regions(None) == EXOSCALE_ZONES
    assert api.regions("de-muc-1") == ["de-muc-1"]
    assert api.regions("ch-xyz-9") == ["ch-xyz-9"]  # a zone newer than our list: the API's call
    with pytest.raises(NotARegion, match="exoscale: 'NORD-NO-KRS-1' is not an Exoscale zone"):
        api.regions("NORD-NO-KRS-1")


async def test_an_endpoint_without_zone_lists_one_zone_only(simulator: Simulator) -> None:
    simulator.add_snapshot(ID_A, MiB, zone="at-vie-1")
    fixed = simulator.settings().endpoint.replace("{zone}", "at-vie-1")
    settings = ExoscaleSettings(simulator.key, simulator.secret, fixed)
    async with Exoscale(settings, retry=FAST) as api:
        # Every zone's listing would be at-vie-1's, eight times over.
        with pytest.raises(errors.ConfigError, match=r"has no \{zone\}.*pass --region ZONE"):
            api.regions(None)
        assert [r.id for r in await api.list_snapshots("at-vie-1")] == [ID_A]
