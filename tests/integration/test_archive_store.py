"""The archive store against a moto S3 server over HTTP."""

import hashlib

import boto3
import pytest

from worker import __version__
from worker.archive import ArchiveStore
from worker.errors import (
    ArchiveExists,
    ConfigError,
    NotFound,
    ObjectExists,
    StoreIntegrityError,
)
from worker.manifest import ArchivedObject, Manifest
from worker.settings import S3Settings
from worker.units import MiB

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(s3_settings):
    async with ArchiveStore(s3_settings) as store:
        yield store


def _manifest(snapshot_id="snap-1", zone="ch-gva-2"):
    return Manifest(
        provider="exoscale",
        zone=zone,
        snapshot_id=snapshot_id,
        snapshot_name="db-nightly",
        instance_id="inst-1",
        created_at="2026-11-01T00:00:00Z",
        size=3,
        md5=hashlib.md5(b"abc").hexdigest(),
        part_size=5 * MiB,
        objects=(ArchivedObject(f"snaparchive/exoscale/{zone}/{snapshot_id}/image", 3, "e-1", 0),),
        tool_version=__version__,
        archived_at="2026-11-02T00:00:00Z",
    )


def test_key_layout(s3_settings):
    store = ArchiveStore(s3_settings)
    assert store.manifest_key("exoscale", "ch-gva-2", "s1") == (
        "snaparchive/exoscale/ch-gva-2/s1/manifest.json"
    )
    assert (
        store.image_key("exoscale", "ch-gva-2", "s1", 0, 1)
        == "snaparchive/exoscale/ch-gva-2/s1/image"
    )
    assert store.image_key("exoscale", "ch-gva-2", "s1", 2, 3) == (
        "snaparchive/exoscale/ch-gva-2/s1/image.seg00002"
    )
    with pytest.raises(ValueError, match="snapshot id must be a non-empty name"):
        store.manifest_key("exoscale", "ch-gva-2", "../x")


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (S3Settings(endpoint="not a url", bucket="b"), "SNAPARCHIVE_S3_ENDPOINT"),
        (S3Settings(region="bad region!", bucket="b"), "SNAPARCHIVE_S3_REGION"),
        (S3Settings(), "SNAPARCHIVE_S3_BUCKET"),
    ],
)
def test_bad_settings_name_the_variable(settings, variable):
    with pytest.raises(ConfigError, match=variable):
        ArchiveStore(settings)


async def test_manifest_is_written_once_and_found(store):
    assert await store.find_archive("exoscale", "ch-gva-2", "snap-1") is None
    key = await store.put_manifest(_manifest())
    assert key == "snaparchive/exoscale/ch-gva-2/snap-1/manifest.json"
    assert await store.find_archive("exoscale", "ch-gva-2", "snap-1") == _manifest()
    with pytest.raises(ArchiveExists) as raised:
        await store.put_manifest(_manifest())
    assert raised.value.manifest_key == key
    await store.put_manifest(_manifest("snap-2", zone="de-fra-1"))
    assert await store.archived_snapshots() == {
        ("exoscale", "ch-gva-2", "snap-1"),
        ("exoscale", "de-fra-1", "snap-2"),
    }
    result = store.result_from_manifest(_manifest())
    assert result.manifest_key == key and result.bucket == store.bucket
    assert result.to_dict()["objects"][0]["key"] == "snaparchive/exoscale/ch-gva-2/snap-1/image"


async def test_missing_and_malformed_manifests(store, s3_settings):
    with pytest.raises(NotFound):
        await store.read_manifest("snaparchive/exoscale/ch-gva-2/nothing/manifest.json")
    key = "snaparchive/exoscale/ch-gva-2/bad/manifest.json"
    store.client.put_object(Bucket=s3_settings.bucket, Key=key, Body=b"{not json")
    with pytest.raises(StoreIntegrityError, match="malformed manifest"):
        await store.read_manifest(key)


async def test_multipart_round_trip_and_open_upload_listing(store, s3_settings):
    key = store.image_key("exoscale", "ch-gva-2", "snap-1", 0, 1)
    upload_id = await store.create_upload(key, {"source-md5": "x"})
    first = bytearray(b"a" * (5 * MiB))
    answers = [
        await store.upload_part(key, upload_id, 1, first),
        await store.upload_part(key, upload_id, 2, b"tail"),
    ]
    assert answers[0].etag == hashlib.md5(first).hexdigest() and answers[0].etag_is_md5
    etags = [answer.etag for answer in answers]
    assert [(p.number, p.size, p.etag) for p in await store.list_parts(key, upload_id)] == [
        (1, 5 * MiB, etags[0]),
        (2, 4, etags[1]),
    ]
    assert [(u.key, u.upload_id) for u in await store.list_open_uploads()] == [(key, upload_id)]
    await store.complete_upload(key, upload_id, etags)
    assert await store.list_open_uploads() == []
    body = (
        boto3.client("s3", endpoint_url=s3_settings.endpoint)
        .get_object(Bucket=s3_settings.bucket, Key=key)["Body"]
        .read()
    )
    assert body == bytes(first) + b"tail"


async def test_complete_never_replaces_an_object(store):
    key = "snaparchive/exoscale/ch-gva-2/snap-1/image"
    for attempt in range(2):
        upload_id = await store.create_upload(key, {})
        etag = (await store.upload_part(key, upload_id, 1, b"only part")).etag
        if attempt == 0:
            await store.complete_upload(key, upload_id, [etag])
        else:
            with pytest.raises(ObjectExists):
                await store.complete_upload(key, upload_id, [etag])
            await store.abort_upload(key, upload_id)
    assert await store.list_open_uploads() == []


async def test_abort_drops_the_upload_and_is_idempotent(store):
    key = "snaparchive/exoscale/ch-gva-2/snap-9/image"
    upload_id = await store.create_upload(key, {})
    await store.upload_part(key, upload_id, 1, b"x")
    await store.abort_upload(key, upload_id)
    await store.abort_upload(key, upload_id)
    assert await store.list_parts(key, upload_id) is None
    assert await store.list_open_uploads() == []
