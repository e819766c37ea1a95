"""The async Exoscale client against the simulator over HTTP: calls, faults, secrecy."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from worker import errors
from worker.exoscale import ExoscaleClient
from worker.retry import RetryPolicy
from worker.settings import ExoscaleSettings
from worker.simulator import Faults
from worker.units import MiB

ZONE = "de-fra-1"
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


@pytest.fixture
async def client(simulator) -> AsyncIterator[ExoscaleClient]:
    async with ExoscaleClient(simulator.settings(), retry=FAST) as client:
        yield client


@pytest.fixture
def snapshot_id(simulator) -> str:
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 3 * MiB, zone=ZONE, name="db-disk")
    return snapshot_id


async def test_export_and_wait_then_snapshot_is_exported(client, simulator, snapshot_id):
    listed = await client.list_snapshots(ZONE)
    assert [(s.id, s.name, s.state, s.size_gib) for s in listed] == [
        (snapshot_id, "db-disk", "ready", 10)
    ]
    assert listed[0].instance_id and listed[0].created_at
    operation = await client.export_snapshot(ZONE, snapshot_id)
    assert operation.state == "pending"
    done = await client.wait_operation(ZONE, operation.id, timeout=60)
    assert done.state == "success" and done.reference_id == snapshot_id
    snapshot = await client.get_snapshot(ZONE, snapshot_id)
    assert snapshot.state == "exported"
    assert snapshot.export is not None
    assert snapshot.export.md5sum == simulator.image_md5(snapshot_id)
    assert snapshot.export.presigned_url.startswith(simulator.url)
    # The presigned URL is a credential: not in repr, not in the raw record.
    assert snapshot.export.presigned_url not in repr(snapshot)
    assert "presigned-url" not in snapshot.raw["export"]


async def test_instance_template_and_zones(client, simulator, snapshot_id):
    snapshot = await client.get_snapshot(ZONE, snapshot_id)
    instance = await client.get_instance(ZONE, snapshot.instance_id)
    assert instance.id == snapshot.instance_id and instance.template_id
    template = await client.get_template(ZONE, instance.template_id)
    assert template.id == instance.template_id and template.boot_mode in ("legacy", "uefi")
    zones = await client.list_zones()
    assert ZONE in {z.name for z in zones}


async def test_5xx_burst_and_429_recover_by_retrying(client, simulator, snapshot_id):
    simulator.set_faults(Faults(api_errors=2, rate_limits=1, retry_after=1))
    snapshot = await client.get_snapshot(ZONE, snapshot_id)
    assert snapshot.id == snapshot_id


async def test_persistent_5xx_is_a_typed_server_error(client, simulator, snapshot_id):
    simulator.set_faults(Faults(api_errors=FAST.attempts, api_error_status=502))
    with pytest.raises(errors.ServerError, match=r"^exoscale: GET /de-fra-1/v2/snapshot/.*502"):
        await client.get_snapshot(ZONE, snapshot_id)
    assert not errors.ServerError.permanent


async def test_persistent_429_is_rate_limited(client, simulator, snapshot_id):
    simulator.set_faults(Faults(rate_limits=FAST.attempts, retry_after=2))
    with pytest.raises(errors.RateLimited) as info:
        await client.get_snapshot(ZONE, snapshot_id)
    assert info.value.retry_after == 2


async def test_unknown_snapshot_is_not_found(client):
    missing = str(uuid.uuid4())
    with pytest.raises(errors.NotFound, match=missing):
        await client.get_snapshot(ZONE, missing)


async def test_wrong_secret_is_refused(simulator, snapshot_id):
    settings = ExoscaleSettings(key=simulator.key, secret="wrong", endpoint=simulator.endpoint)
    async with ExoscaleClient(settings, retry=FAST) as client:
        with pytest.raises(errors.AuthError, match="HTTP 403"):
            await client.list_snapshots(ZONE)


async def test_failed_operation_names_its_reason(client, simulator, snapshot_id):
    simulator.set_faults(Faults(export_failures=1, failure_reason="busy"), snapshot_id=snapshot_id)
    operation = await client.export_snapshot(ZONE, snapshot_id)
    with pytest.raises(errors.OperationFailed, match=r"ended in failure \(reason: busy\)"):
        await client.wait_operation(ZONE, operation.id, timeout=60)


async def test_stuck_operation_is_polled_on_schedule_until_the_deadline(
    client, simulator, snapshot_id
):
    simulator.set_faults(Faults(export_stuck=True), snapshot_id=snapshot_id)
    operation = await client.export_snapshot(ZONE, snapshot_id)
    early = await client.check_operation(ZONE, operation.id, elapsed=0)
    late = await client.check_operation(ZONE, operation.id, elapsed=600)
    assert (early.operation.state, early.next_check_in) == ("pending", 3.0)
    assert late.next_check_in == pytest.approx(40.34, abs=0.01)
    with pytest.raises(errors.OperationTimeout, match="still pending"):
        await client.wait_operation(ZONE, operation.id, timeout=1)


async def test_no_secret_or_presigned_url_in_logs(client, simulator, snapshot_id, caplog):
    caplog.set_level(logging.DEBUG)
    simulator.set_faults(Faults(api_errors=1, rate_limits=1, retry_after=0))
    operation = await client.export_snapshot(ZONE, snapshot_id)
    await client.wait_operation(ZONE, operation.id, timeout=60)
    snapshot = await client.get_snapshot(ZONE, snapshot_id)
    assert snapshot.export is not None
    assert "retrying" in caplog.text  # the faults were logged...
    signature = snapshot.export.presigned_url.split("?", 1)[1]
    for secret in (simulator.secret, signature, "signature="):
        assert secret not in caplog.text  # ...without credentials


async def test_an_endpoint_without_zone_serves_one_zone_and_says_so(simulator, caplog):
    # The simulator's de-fra-1 endpoint, fixed: before, ch-gva-2's calls went there silently
    # and got de-fra-1's answers.
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, MiB, zone=ZONE)
    fixed = simulator.settings().endpoint.replace("{zone}", ZONE)
    settings = ExoscaleSettings(simulator.key, simulator.secret, fixed)
    with caplog.at_level(logging.WARNING, logger="worker.exoscale"):
        client = ExoscaleClient(settings, retry=FAST)
    assert "EXOSCALE_API_ENDPOINT has no {zone}" in caplog.text
    async with client:
        assert [s.id for s in await client.list_snapshots(ZONE)] == [snapshot_id]
        with pytest.raises(errors.ConfigError, match=r"serves de-fra-1: refusing .* ch-gva-2"):
            await client.list_snapshots("ch-gva-2")
        assert [s.id for s in await client.list_snapshots(ZONE)] == [snapshot_id]
