"""Manifests are read strictly: bounded reads of manifest keys only, every field checked.

Over the moto server (and a streaming proxy in front of it that counts what it delivers).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.manifests import manifest_document, put_manifest, put_object
from tests.fixtures.store_proxy import StoreProxy
from worker.archive import ArchiveStore
from worker.errors import NotFound, StoreIntegrityError
from worker.manifest import MANIFEST_LIMIT
from worker.settings import S3Settings
from worker.units import MiB

pytestmark = pytest.mark.integration

KEY = "snaparchive/exoscale/ch-gva-2/snap-1/manifest.json"
FOLDER = "snaparchive/exoscale/ch-gva-2/snap-1"


@pytest.fixture
async def store(s3_settings: S3Settings) -> Iterator[ArchiveStore]:
    async with ArchiveStore(s3_settings) as store:
        yield store


async def test_a_commit_s_manifests_read_back(store, moto_endpoint, s3_bucket):
    one = put_manifest(moto_endpoint, s3_bucket, KEY)
    manifest = await store.read_manifest(KEY)
    assert [(o.key, o.size, o.offset) for o in manifest.objects] == [(f"{FOLDER}/image", 3, 0)]
    assert manifest.md5 == one["md5"]
    key = "snaparchive/gcore/7/snap-2/manifest.json"
    put_manifest(moto_endpoint, s3_bucket, key, sizes=(10, 10, 4))
    manifest = await store.read_manifest(key)
    assert [(o.key.rsplit("/", 1)[1], o.offset) for o in manifest.objects] == [
        ("image.seg00000", 0),
        ("image.seg00001", 10),
        ("image.seg00002", 20),
    ]
    assert manifest.size == 24


def _segment(document: dict[str, Any], n: int, **fields: Any) -> dict[str, Any]:
    document["segments"][n].update(fields)
    return document


def _swap_first_two(document: dict[str, Any]) -> dict[str, Any]:
    document["segments"][:2] = document["segments"][1::-1]
    return document


def _drop(document: dict[str, Any], *path: Any) -> dict[str, Any]:
    target = document
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return document


ONE = manifest_document(KEY)
THREE = manifest_document(KEY, sizes=(10, 10, 4))

#: (what is wrong, the stored document (or bytes), the problem the error names)
DAMAGED: list[tuple[str, Any, str]] = [
    # Pointing elsewhere: another tenant's object, another snapshot's, another archive's.
    (
        "another tenant's object",
        _segment(copy.deepcopy(ONE), 0, key="tenant-b/exoscale/ch-gva-2/snap-1/image"),
        "segment 0 key 'tenant-b/exoscale/ch-gva-2/snap-1/image' is not",
    ),
    (
        "another snapshot's image",
        _segment(copy.deepcopy(ONE), 0, key="snaparchive/exoscale/ch-gva-2/snap-9/image"),
        "segment 0 key",
    ),
    (
        "a key outside the layout",
        _segment(copy.deepcopy(ONE), 0, key=f"{FOLDER}/image/../../snap-9/image"),
        "segment 0 key",
    ),
    (
        "names another snapshot",
        {**ONE, "snapshot_id": "snap-9"},
        "snapshot_id 'snap-9' is not its key's 'snap-1'",
    ),
    ("names another zone", {**ONE, "zone": "de-fra-1"}, "zone 'de-fra-1' is not its key's"),
    ("names another provider", {**ONE, "provider": "gcore"}, "provider 'gcore' is not its key's"),
    ("lists no segments", {**ONE, "segments": []}, "no segments"),
    (
        "one object named as a segment",
        _segment(copy.deepcopy(ONE), 0, key=f"{FOLDER}/image.seg00000"),
        "segment 0 key",
    ),
    (
        "segments named as one object",
        _segment(copy.deepcopy(THREE), 0, key=f"{FOLDER}/image"),
        "segment 0 key",
    ),
    ("segments out of order", _swap_first_two(copy.deepcopy(THREE)), "segment 0 key"),
    # Shape and types.
    ("not JSON", b"{not json", "not JSON"),
    ("JSON nested too deep", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ("a JSON list", b"[1, 2]", "not a JSON object"),
    ("garbage", b"{}", "unknown format None"),
    ("an unknown format", {**ONE, "format": 3}, "unknown format 3"),
    ("format 2 without its fields", {**ONE, "format": 2}, "no 'policy'"),
    (
        "a template of a foreign shape",
        {**ONE, "format": 2, "policy": None, "template": {"boot_mode": "bios"}},
        "template has fields",
    ),
    (
        "a template with an unknown boot mode",
        {
            **ONE,
            "format": 2,
            "policy": "web",
            "template": {
                "boot_mode": "bios",
                "ssh_key_enabled": True,
                "password_enabled": False,
                "default_user": None,
            },
        },
        "boot_mode 'bios' is not legacy or uefi",
    ),
    ("format true", {**ONE, "format": True}, "unknown format True"),
    ("a missing field", _drop(copy.deepcopy(ONE), "archived_at"), "no 'archived_at'"),
    ("an unknown field", {**ONE, "owner": "x"}, "unknown field 'owner'"),
    ("size a string", {**ONE, "size": "3"}, "size is a str, not int"),
    ("size true", {**ONE, "size": True}, "size is a bool, not int"),
    ("instance id a number", {**ONE, "instance_id": 7}, "instance_id is a int, not str or null"),
    ("segments an object", {**ONE, "segments": {"0": {}}}, "segments is a dict, not list"),
    ("an upper-case md5", {**ONE, "md5": ONE["md5"].upper()}, "not 32 lowercase hex digits"),
    ("a short md5", {**ONE, "md5": "abc"}, "md5 'abc' is not 32"),
    ("an md5 and a newline", {**ONE, "md5": ONE["md5"] + "\n"}, "not 32 lowercase hex digits"),
    ("size zero", {**ONE, "size": 0}, "size 0 is not positive"),
    ("part size negative", {**ONE, "part_size": -1}, "part_size -1 is not positive"),
    ("a segment not an object", {**ONE, "segments": ["image"]}, "segment 0 is a str"),
    (
        "a segment without etag",
        _drop(copy.deepcopy(ONE), "segments", 0, "etag"),
        "segment 0 has no 'etag'",
    ),
    (
        "a segment with more",
        _segment(copy.deepcopy(ONE), 0, url="x"),
        "segment 0 has unknown field 'url'",
    ),
    ("an empty etag", _segment(copy.deepcopy(ONE), 0, etag=""), "segment 0 has an empty etag"),
    ("an etag not a string", _segment(copy.deepcopy(ONE), 0, etag=5), "segment 0 etag is a int"),
    (
        "a segment of 0 bytes",
        _segment(copy.deepcopy(THREE), 2, size=0),
        "segment 2 size 0 is not positive",
    ),
    (
        "a segment size a float",
        _segment(copy.deepcopy(ONE), 0, size=3.0),
        "segment 0 size is a float",
    ),
    (
        "a gap between segments",
        _segment(copy.deepcopy(THREE), 1, offset=11),
        "segment 1 offset 11 is not 10",
    ),
    (
        "a first offset not 0",
        _segment(copy.deepcopy(ONE), 0, offset=1),
        "segment 0 offset 1 is not 0",
    ),
    ("sizes short of size", {**THREE, "size": 25}, "segments add up to 24 bytes, size is 25"),
    ("sizes beyond size", {**ONE, "size": 2}, "segments add up to 3 bytes, size is 2"),
]


@pytest.mark.parametrize(
    ("stored", "problem"),
    [(stored, problem) for _, stored, problem in DAMAGED],
    ids=[what for what, _, _ in DAMAGED],
)
async def test_a_damaged_manifest_is_refused_naming_the_key_and_the_problem(
    store, moto_endpoint, s3_bucket, stored, problem
):
    put_object(moto_endpoint, s3_bucket, KEY, stored)
    with pytest.raises(StoreIntegrityError) as raised:
        await store.read_manifest(KEY)
    message = str(raised.value)
    assert message.startswith(f"malformed manifest {KEY}: ")
    assert problem in message
    assert "\n" not in message


async def test_an_empty_object_is_refused(store, moto_endpoint, s3_bucket):
    put_object(moto_endpoint, s3_bucket, KEY, b"")
    with pytest.raises(StoreIntegrityError, match=f"^malformed manifest {KEY}: empty object$"):
        await store.read_manifest(KEY)


async def test_a_missing_manifest_is_not_found(store):
    with pytest.raises(NotFound):
        await store.read_manifest(KEY)
    assert await store.find_archive("exoscale", "ch-gva-2", "snap-1") is None


@pytest.mark.parametrize(
    "key",
    [
        f"{FOLDER}/image",  # what an ArchiveExists from CompleteMultipartUpload carries
        f"{FOLDER}/image.seg00000",
        "elsewhere/exoscale/ch-gva-2/snap-1/manifest.json",
        "snaparchive/exoscale/snap-1/manifest.json",
        "snaparchive/x/exoscale/ch-gva-2/snap-1/manifest.json",
        "snaparchive/exoscale/../snap-1/manifest.json",
        "snaparchive/exoscale//snap-1/manifest.json",
        "manifest.json",
    ],
)
async def test_only_manifest_keys_are_read(store, moto_endpoint, s3_bucket, key):
    put_object(moto_endpoint, s3_bucket, key, manifest_document(KEY))
    with pytest.raises(StoreIntegrityError, match=r"^not a manifest key: "):
        await store.read_manifest(key)


BIG = 20 * MiB


async def test_a_huge_object_at_a_manifest_key_is_refused_after_one_range(
    store_proxy: StoreProxy, moto_endpoint, s3_bucket
):
    put_object(moto_endpoint, s3_bucket, KEY, b"{" + b" " * (BIG - 1))
    settings = S3Settings(endpoint=store_proxy.url, bucket=s3_bucket)
    async with ArchiveStore(settings) as store:
        with pytest.raises(StoreIntegrityError, match="longer than a manifest's 1048576 bytes"):
            await store.read_manifest(KEY)
    assert store_proxy.wait() <= MANIFEST_LIMIT + 1


async def test_a_store_ignoring_the_range_is_hung_up_on(store_proxy, moto_endpoint, s3_bucket):
    store_proxy.strip_range = True
    put_object(moto_endpoint, s3_bucket, KEY, b"{" + b" " * (BIG - 1))
    settings = S3Settings(endpoint=store_proxy.url, bucket=s3_bucket)
    async with ArchiveStore(settings) as store:
        with pytest.raises(StoreIntegrityError, match="longer than a manifest's 1048576 bytes"):
            await store.read_manifest(KEY)
    # Refused by its Content-Length, unread: only what socket buffers held went out.
    assert store_proxy.wait() < BIG // 2
