"""``snaparchive verify``, the scrub (issue 14): archives read back and checked, results
recorded beside their manifests and shown by ``archives list``; a failed verification is loud
(ERROR, exit 3) and deletes nothing. Over the moto server."""

from __future__ import annotations

import json
import logging
import os
import random

import pytest

from tests.fixtures.manifests import put_manifest, put_object
from worker.catalog import ArchiveEntry
from worker.cli import main
from worker.manifest import Manifest
from worker.scrub import in_subset, select

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"


@pytest.fixture
def env(monkeypatch, moto_endpoint, s3_bucket) -> dict[str, str]:
    values = {
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def _archive(endpoint: str, bucket: str, snapshot_id: str, sizes=(1024, 7)) -> dict:
    """An archive of ``b"x"`` bytes in objects of ``sizes`` (its manifest says their MD5)."""
    folder = f"snaparchive/exoscale/{ZONE}/{snapshot_id}"
    document = put_manifest(endpoint, bucket, f"{folder}/manifest.json", sizes=sizes)
    for segment in document["segments"]:
        put_object(endpoint, bucket, segment["key"], b"x" * segment["size"])
    return document


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse refuses the arguments
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _ids(n: int) -> list[str]:
    rng = random.Random(7)
    return [
        f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}" for _ in range(n)
    ]


def test_a_good_archive_verifies_and_the_result_is_recorded(env, capsys, moto_endpoint, s3_bucket):
    (snapshot_id,) = _ids(1)
    _archive(moto_endpoint, s3_bucket, snapshot_id)

    code, out, _ = _cli(capsys, "verify", snapshot_id, "--zone", ZONE, "--json")

    assert code == 0
    result = json.loads(out)
    assert (result["ok"], result["error"], result["snapshot_id"]) == (True, None, snapshot_id)
    code, out, _ = _cli(capsys, "archives", "list", "--json")
    (listed,) = json.loads(out)
    assert (listed["verified"], listed["verified_at"]) == (True, result["checked_at"])


@pytest.mark.parametrize("damage", ["flipped-byte", "missing-object"])
def test_a_bad_archive_fails_loudly_and_nothing_is_deleted(
    env, capsys, caplog, moto_endpoint, s3_bucket, damage
):
    import boto3

    (snapshot_id,) = _ids(1)
    document = _archive(moto_endpoint, s3_bucket, snapshot_id)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    first = document["segments"][0]["key"]
    if damage == "flipped-byte":
        s3.put_object(Bucket=s3_bucket, Key=first, Body=b"y" + b"x" * 1023)
    else:
        s3.delete_object(Bucket=s3_bucket, Key=first)
    before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])

    with caplog.at_level(logging.ERROR):
        code, out, err = _cli(capsys, "verify", snapshot_id, "--zone", ZONE)

    assert code == 3, err
    assert out.startswith(f"{ZONE}/{snapshot_id}: FAILED: ")
    assert "VERIFICATION FAILED" in caplog.text
    after = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert set(before) <= set(after)  # only verify.json was added
    code, out, _ = _cli(capsys, "archives", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["verified"] is False and listed["verify_error"]


def test_all_and_subsets_cover_every_archive_once(env, capsys, moto_endpoint, s3_bucket):
    ids = _ids(9)
    for snapshot_id in ids:
        _archive(moto_endpoint, s3_bucket, snapshot_id, sizes=(5,))

    code, out, _ = _cli(capsys, "verify", "--all", "--json")
    assert code == 0 and sorted(r["snapshot_id"] for r in json.loads(out)) == sorted(ids)

    seen: list[str] = []
    for part in (1, 2, 3):
        code, out, _ = _cli(capsys, "verify", "--all", "--subset", f"{part}/3", "--json")
        assert code == 0
        seen += [r["snapshot_id"] for r in json.loads(out)]
    assert sorted(seen) == sorted(ids)  # three runs read every archive exactly once

    code, out, _ = _cli(capsys, "verify", "--all", "--sample", "30%", "--json")
    assert code == 0 and len(json.loads(out)) == 3  # 30 % of 9, rounded up


def test_usage_errors_are_exit_2(env, capsys):
    assert _cli(capsys, "verify")[0] == 2
    assert _cli(capsys, "verify", "--all", "--subset", "4/3")[0] == 2
    (snapshot_id,) = _ids(1)
    assert _cli(capsys, "verify", snapshot_id)[0] == 2
    assert _cli(capsys, "verify", snapshot_id, "--zone", ZONE, "--sample", "5%")[0] == 2


def test_subsets_are_deterministic_and_disjoint():
    ids = _ids(50)
    groups = [{i for i in ids if in_subset(i, n, 4)} for n in range(1, 5)]
    assert set().union(*groups) == set(ids)
    assert sum(len(g) for g in groups) == len(ids)
    entries = [ArchiveEntry(f"k/{i}", _manifest(i)) for i in ids]
    assert [e.snapshot_id for e in select(entries, (2, 4))] == [i for i in ids if i in groups[1]]


def _manifest(snapshot_id: str) -> Manifest:
    return Manifest(
        "exoscale",
        ZONE,
        snapshot_id,
        "n",
        None,
        None,
        1,
        "0" * 32,
        1,
        (),
        "0",
        "2026-12-01T00:00:00+00:00",
    )
