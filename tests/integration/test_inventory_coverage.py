"""The inventory across fake clouds, the simulator and a moto bucket: coverage, skips, failures."""

from __future__ import annotations

import pytest

from tests.fakes.gcore import FakeGcore
from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fakes.instavm import FakeInstaVM
from tests.fixtures.manifests import put_manifest, put_object
from worker.errors import ConfigError
from worker.providers.inventory import UsageError, collect
from worker.retry import RetryPolicy
from worker.settings import EXOSCALE_ZONES
from worker.simulator import Faults, Simulator
from worker.units import MiB

FAST = RetryPolicy(attempts=2, base=0.001, cap=0.01)
EXO_A = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
EXO_B = "7b2d3c5f-4a6e-4f8b-8c9d-1e2f3a4b5c6d"


def cloud_env(genesis: FakeGenesisCloud, gcore: FakeGcore, instavm: FakeInstaVM) -> dict[str, str]:
    return {
        "GENESISCLOUD_TOKEN": genesis.token,
        "GENESISCLOUD_API_ENDPOINT": genesis.url,
        "GCORE_API_KEY": gcore.api_key,
        "GCORE_PROJECT_ID": str(gcore.project_id),
        "GCORE_REGION_ID": "7",
        "GCORE_API_ENDPOINT": gcore.url,
        "INSTAVM_API_KEY": instavm.api_key,
        "INSTAVM_API_ENDPOINT": instavm.url,
    }


def put(endpoint: str, bucket: str, key: str) -> None:
    if key.endswith("/manifest.json"):
        put_manifest(endpoint, bucket, key)
    else:
        put_object(endpoint, bucket, key, b"image bytes")


async def test_archived_column_follows_the_manifests(
    genesis_api: FakeGenesisCloud,
    gcore_api: FakeGcore,
    instavm_api: FakeInstaVM,
    simulator: Simulator,
    moto_endpoint: str,
    s3_bucket: str,
) -> None:
    g_done, g_half = genesis_api.add(), genesis_api.add()
    c_done = gcore_api.add(7)
    i_open = instavm_api.add()
    simulator.add_snapshot(EXO_A, MiB, zone="ch-gva-2")
    simulator.add_snapshot(EXO_B, MiB, zone="de-fra-1")
    prefix = "snaparchive/"
    put(
        moto_endpoint, s3_bucket, f"{prefix}genesiscloud/NORD-NO-KRS-1/{g_done['id']}/manifest.json"
    )
    put(moto_endpoint, s3_bucket, f"{prefix}gcore/7/{c_done['id']}/manifest.json")
    put(moto_endpoint, s3_bucket, f"{prefix}exoscale/ch-gva-2/{EXO_A}/manifest.json")
    # An image without its manifest is a failed commit, not an archive.
    put(moto_endpoint, s3_bucket, f"{prefix}genesiscloud/NORD-NO-KRS-1/{g_half['id']}/image")
    # The same id archived from another zone does not count for this one.
    put(moto_endpoint, s3_bucket, f"{prefix}exoscale/ch-gva-2/{EXO_B}/manifest.json")
    env = {
        **cloud_env(genesis_api, gcore_api, instavm_api),
        **simulator.env(),
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
    }

    inventory = await collect(env, retry=FAST)

    archived = {(r.provider, r.id): inventory.is_archived(r) for r in inventory.records}
    assert archived == {
        ("exoscale", EXO_A): True,
        ("exoscale", EXO_B): False,
        ("gcore", c_done["id"]): True,
        ("genesiscloud", g_done["id"]): True,
        ("genesiscloud", g_half["id"]): False,
        ("instavm", i_open["id"]): False,
    }
    assert [r.provider for r in inventory.records] == sorted(r.provider for r in inventory.records)
    assert inventory.notes == [] and inventory.failures == []


async def test_without_a_bucket_coverage_is_unknown_and_says_why(
    genesis_api: FakeGenesisCloud, gcore_api: FakeGcore, instavm_api: FakeInstaVM
) -> None:
    genesis_api.add()
    inventory = await collect(cloud_env(genesis_api, gcore_api, instavm_api), retry=FAST)
    assert [inventory.is_archived(r) for r in inventory.records] == [None]
    assert inventory.notes == [
        "exoscale: skipped, EXOSCALE_API_KEY is not set",
        "archived: unknown, SNAPARCHIVE_S3_BUCKET is not set",
    ]


async def test_a_failing_provider_hides_no_other(
    genesis_api: FakeGenesisCloud, gcore_api: FakeGcore, instavm_api: FakeInstaVM
) -> None:
    genesis_api.add()
    gcore_api.add()
    instavm_api.add()
    env = {**cloud_env(genesis_api, gcore_api, instavm_api), "GENESISCLOUD_TOKEN": "revoked"}
    inventory = await collect(env, retry=FAST)
    assert sorted(r.provider for r in inventory.records) == ["gcore", "instavm"]
    assert [(f.source, f.message) for f in inventory.failures] == [
        (
            "genesiscloud",
            "genesiscloud: GET /compute/v1/snapshots: HTTP 401: Invalid or missing API token",
        )
    ]


async def test_one_failing_zone_hides_no_other_zone(simulator: Simulator) -> None:
    for n, zone in enumerate(EXOSCALE_ZONES):
        simulator.add_snapshot(f"{n}a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c", MiB, zone=zone)
    simulator.set_faults(Faults(api_errors=2, api_error_status=502))
    once = RetryPolicy(attempts=1)
    inventory = await collect(simulator.env(), providers=["exoscale"], retry=once)
    assert len(inventory.records) == len(EXOSCALE_ZONES) - 2
    assert len(inventory.failures) == 2
    assert all(f.message.startswith("exoscale: GET /") for f in inventory.failures)
    assert all("HTTP 502" in f.message for f in inventory.failures)


async def test_unreachable_bucket_is_a_failure(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM, moto_endpoint: str
) -> None:
    instavm_api.add()
    env = {
        "INSTAVM_API_KEY": instavm_api.api_key,
        "INSTAVM_API_ENDPOINT": instavm_api.url,
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": "no-such-bucket",
    }
    inventory = await collect(env, retry=FAST)
    assert [r.provider for r in inventory.records] == ["instavm"]
    assert inventory.archived is None
    messages = sorted(f.message for f in inventory.failures)
    assert len(messages) == 1
    assert messages[0].startswith("archive: S3 ListObjectsV2 failed: HTTP 404 NoSuchBucket")
    assert "genesiscloud: skipped, GENESISCLOUD_TOKEN is not set" in inventory.notes


async def test_misconfigured_provider_is_a_configuration_error(instavm_api: FakeInstaVM) -> None:
    # A configuration error, not a provider that failed to answer: nothing is listed.
    env = {
        "GCORE_API_KEY": "k",
        "INSTAVM_API_KEY": instavm_api.api_key,
        "INSTAVM_API_ENDPOINT": instavm_api.url,
    }
    with pytest.raises(ConfigError, match=r"^gcore: GCORE_PROJECT_ID is not set$"):
        await collect(env, retry=FAST)


async def test_region_a_provider_cannot_have(
    genesis_api: FakeGenesisCloud, gcore_api: FakeGcore, instavm_api: FakeInstaVM
) -> None:
    wanted = genesis_api.add(region="ARC-IS-HAF-1")
    genesis_api.add()
    gcore_api.add(7)
    instavm_api.add()
    env = cloud_env(genesis_api, gcore_api, instavm_api)
    inventory = await collect(env, region="ARC-IS-HAF-1", retry=FAST)
    assert [r.id for r in inventory.records] == [wanted["id"]]
    assert (
        "gcore: --region must be a numeric Gcore region id, not 'ARC-IS-HAF-1'; skipped"
        in inventory.notes
    )
    with pytest.raises(UsageError, match="gcore: --region must be a numeric"):
        await collect(env, providers=["gcore"], region="ARC-IS-HAF-1", retry=FAST)
