"""Coverage counts an archive only when its manifest reads back valid."""

from __future__ import annotations

import pytest

from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fixtures.manifests import manifest_document, put_manifest, put_object
from worker.archive import ArchiveStore
from worker.providers.inventory import collect
from worker.retry import RetryPolicy
from worker.settings import S3Settings

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=2, base=0.001, cap=0.01)
FOLDER = "snaparchive/genesiscloud/NORD-NO-KRS-1"


async def test_only_valid_manifests_count_as_archived(
    genesis_api: FakeGenesisCloud, moto_endpoint: str, s3_bucket: str
) -> None:
    valid, garbage, other, foreign, empty = (genesis_api.add()["id"] for _ in range(5))
    put_manifest(moto_endpoint, s3_bucket, f"{FOLDER}/{valid}/manifest.json")
    put_object(moto_endpoint, s3_bucket, f"{FOLDER}/{garbage}/manifest.json", b"{}")
    # A manifest naming another snapshot, and one whose object is another tenant's.
    put_manifest(moto_endpoint, s3_bucket, f"{FOLDER}/{other}/manifest.json", snapshot_id=valid)
    document = manifest_document(f"{FOLDER}/{foreign}/manifest.json")
    document["segments"][0]["key"] = f"tenant-b/{foreign}/image"
    put_object(moto_endpoint, s3_bucket, f"{FOLDER}/{foreign}/manifest.json", document)
    put_manifest(moto_endpoint, s3_bucket, f"{FOLDER}/{empty}/manifest.json", segments=[])
    env = {
        "GENESISCLOUD_TOKEN": genesis_api.token,
        "GENESISCLOUD_API_ENDPOINT": genesis_api.url,
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
    }

    inventory = await collect(env, providers=["genesiscloud"], retry=FAST)

    archived = {r.id: inventory.is_archived(r) for r in inventory.records}
    assert archived == {valid: True, garbage: False, other: False, foreign: False, empty: False}
    assert inventory.failures == []
    (note,) = inventory.notes
    assert note.startswith("archive: not counted as archived: malformed manifest ")
    assert note.endswith("(and 3 more)")


async def test_every_manifest_is_read_and_checked(
    s3_settings: S3Settings, moto_endpoint: str, s3_bucket: str
) -> None:
    for n in range(40):
        put_manifest(moto_endpoint, s3_bucket, f"snaparchive/gcore/7/snap-{n:02d}/manifest.json")
    for n in (3, 17):
        put_object(moto_endpoint, s3_bucket, f"snaparchive/gcore/7/bad-{n}/manifest.json", b"{}")
    put_object(moto_endpoint, s3_bucket, "snaparchive/gcore/7/snap-00/image", b"x")
    async with ArchiveStore(s3_settings, max_workers=4) as store:
        scan = await store.scan_archives(concurrency=4)
        assert await store.archived_snapshots() == scan.archived
    assert scan.archived == {("gcore", "7", f"snap-{n:02d}") for n in range(40)}
    assert scan.refused == [
        f"malformed manifest snaparchive/gcore/7/bad-{n}/manifest.json: unknown format None"
        for n in (17, 3)
    ]
