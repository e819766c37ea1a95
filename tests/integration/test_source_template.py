"""An archive records how its source instance booted (issue 12): get-instance, then
get-template, over the simulator's HTTP API; a gone instance or a failing API records null and
fails nothing."""

from __future__ import annotations

import json
import logging
import uuid

import boto3
import pytest

from worker.cli import main
from worker.exoscale import ExoscaleClient
from worker.manifest import SourceTemplate
from worker.retry import RetryPolicy
from worker.simulator import Faults
from worker.source_template import Overrides, lookup_source_template, registration_settings
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"


@pytest.fixture
def env(monkeypatch, simulator, moto_endpoint, s3_bucket):
    values = {
        **simulator.env(),
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
        "SNAPARCHIVE_REDIS_URL": "redis://127.0.0.1:6379/6",
        "SNAPARCHIVE_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
        "SNAPARCHIVE_PART_SIZE": "5MiB",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def manifest_of(moto_endpoint: str, bucket: str, snapshot_id: str) -> dict:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    key = f"snaparchive/exoscale/{ZONE}/{snapshot_id}/manifest.json"
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_the_manifest_records_the_source_instance_s_template(
    env, capsys, simulator, moto_endpoint, s3_bucket
):
    instance_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
    simulator.add_instance(
        instance_id, boot_mode="uefi", default_user="debian", password_enabled=False
    )
    simulator.add_snapshot(snapshot_id, 3 * MiB + 5, instance_id=instance_id)
    code = main(["archive", snapshot_id, "--zone", ZONE, "--local", "--json"])
    assert code == 0, capsys.readouterr().err
    manifest = manifest_of(moto_endpoint, s3_bucket, snapshot_id)
    assert manifest["format"] == 2
    assert manifest["template"] == {
        "boot_mode": "uefi",
        "default_user": "debian",
        "password_enabled": False,
        # Not given: as the simulator's public template has it.
        "ssh_key_enabled": True,
    }


async def test_a_gone_instance_records_no_template_and_says_so_at_info(simulator, caplog):
    caplog.set_level(logging.DEBUG)
    async with ExoscaleClient(simulator.settings()) as client:
        found = await lookup_source_template(client, ZONE, str(uuid.uuid4()))
    assert found is None
    [record] = [r for r in caplog.records if r.name == "worker.source_template"]
    assert record.levelno == logging.INFO
    assert "not found" in record.getMessage()


async def test_a_failing_api_records_no_template(simulator, caplog):
    caplog.set_level(logging.INFO)
    instance_id = str(uuid.uuid4())
    simulator.add_instance(instance_id, boot_mode="uefi")
    simulator.set_faults(Faults(api_errors=1))
    client = ExoscaleClient(simulator.settings(), retry=RetryPolicy(attempts=1))
    async with client:
        assert await lookup_source_template(client, ZONE, instance_id) is None
        # The fault is spent: the next look finds the template.
        found = await lookup_source_template(client, ZONE, instance_id)
    assert found is not None and found.boot_mode == "uefi"
    assert any(r.levelno == logging.INFO and "503" in r.getMessage() for r in caplog.records)


def test_registration_settings_take_overrides_then_the_manifest_then_exoscale_s_defaults():
    recorded = SourceTemplate("uefi", ssh_key_enabled=False, password_enabled=False,
                              default_user="debian")  # fmt: skip
    assert registration_settings(recorded, Overrides()) == recorded
    assert registration_settings(None, Overrides()) == SourceTemplate(
        "legacy", ssh_key_enabled=True, password_enabled=True, default_user=None
    )
    overridden = Overrides("legacy", "root", password_enabled=False, ssh_key_enabled=False)
    assert registration_settings(recorded, overridden) == SourceTemplate(
        "legacy", ssh_key_enabled=False, password_enabled=False, default_user="root"
    )
    assert Overrides.from_dict(overridden.to_dict()) == overridden
