"""``snaparchive restore --template`` (issue 12): an archive registered back as an Exoscale
template, in the same zone and in another one, over the simulator's HTTP API (which really
reads the presigned moto URL and hashes it), moto and real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

import boto3
import pytest

from tests.fixtures.simulator import signed_request
from tests.integration.pipeline_env import cli, forget_queue, pipeline_env, wait_for, worker_process
from worker.cli import main
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"
OTHER = "de-fra-1"
REDIS_URL = "redis://127.0.0.1:6379/6"
#: Distinctive secrets: any of them in a log is a leak.
AWS_SECRET = "aws-secret-never-logged-7f3a"


@pytest.fixture
def env(monkeypatch, simulator, moto_endpoint, s3_bucket):
    values = {
        **simulator.env(),
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
        "SNAPARCHIVE_REDIS_URL": REDIS_URL,
        "SNAPARCHIVE_BROKER_URL": REDIS_URL,
        "SNAPARCHIVE_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
        "SNAPARCHIVE_PART_SIZE": "5MiB",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    forget_queue({**values})


def folder(snapshot_id: str) -> str:
    return f"snaparchive/exoscale/{ZONE}/{snapshot_id}"


def archived(capsys, simulator, size: int = 3 * MiB + 17, **instance: object) -> str:
    """Archive a snapshot of a new instance (``instance``: its template settings); return the
    snapshot id."""
    instance_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
    simulator.add_instance(instance_id, **instance)
    simulator.add_snapshot(snapshot_id, size, instance_id=instance_id)
    code = main(["archive", snapshot_id, "--zone", ZONE, "--local", "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return snapshot_id


def restore(capsys, snapshot_id: str, *argv: str) -> tuple[int, str, str]:
    code = main(["restore", snapshot_id, "--zone", ZONE, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("snaparchive: error")]
    assert len(lines) == 1, err
    return lines[0]


def templates(simulator, zone: str) -> list[dict]:
    answer = signed_request(simulator, "GET", "/template?visibility=private", zone=zone)
    # Less the templates the simulator made for the instances themselves.
    return [t for t in answer.json()["templates"] if t["description"] != "custom template"]


def bucket_keys(moto_endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("target", [ZONE, OTHER], ids=["same zone", "another zone"])
def test_an_archive_becomes_a_template_with_the_source_s_settings(
    env, capsys, simulator, moto_endpoint, s3_bucket, target
):
    snapshot_id = archived(capsys, simulator, boot_mode="uefi", default_user="debian")
    md5 = simulator.image_md5(snapshot_id)
    code, out, err = restore(
        capsys, snapshot_id, "--template", "web-1 restored", "--target-zone", target,
        "--local", "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert answer == {
        "template_id": answer["template_id"],
        "name": "web-1 restored",
        "zone": target,
        "size": 3 * MiB + 17,
        "checksum": md5,
        "source": {
            "zone": ZONE,
            "snapshot_id": snapshot_id,
            "manifest": f"{folder(snapshot_id)}/manifest.json",
        },
    }
    [template] = templates(simulator, target)
    # The simulator read the presigned URL to its end: the bytes it hashed are the archive's.
    assert template["id"] == answer["template_id"]
    assert (template["size"], template["checksum"]) == (3 * MiB + 17, md5)
    assert (template["boot-mode"], template["default-user"]) == ("uefi", "debian")
    # Not given to the instance: as the zone's public template has them.
    assert template["password-enabled"] is False and template["ssh-key-enabled"] is True
    assert snapshot_id in template["description"] and ZONE in template["description"]
    if target != ZONE:
        assert templates(simulator, ZONE) == []  # registered in the target zone only


def test_flags_override_the_source_s_settings(env, capsys, simulator):
    snapshot_id = archived(capsys, simulator, boot_mode="uefi", default_user="debian")
    code, _, err = restore(
        capsys, snapshot_id, "--template", "t", "--local", "--boot-mode", "legacy",
        "--default-user", "root", "--disable-password", "--disable-ssh-key",
    )  # fmt: skip
    assert code == 0, err
    [template] = templates(simulator, ZONE)
    assert (template["boot-mode"], template["default-user"]) == ("legacy", "root")
    assert template["password-enabled"] is False and template["ssh-key-enabled"] is False


def test_a_segmented_archive_goes_through_a_temporary_object_gone_afterwards(
    env, monkeypatch, capsys, simulator, moto_endpoint, s3_bucket
):
    monkeypatch.setenv("SNAPARCHIVE_SEGMENT_LIMIT", "10MiB")
    snapshot_id = archived(capsys, simulator, size=23 * MiB + 5)
    keys = bucket_keys(moto_endpoint, s3_bucket)
    assert [k.rpartition("/")[2] for k in keys] == [
        "image.seg00000", "image.seg00001", "image.seg00002", "manifest.json",
    ]  # fmt: skip
    code, out, err = restore(capsys, snapshot_id, "--template", "big", "--local", "--json")
    assert code == 0, err
    assert json.loads(out)["checksum"] == simulator.image_md5(snapshot_id)
    assert bucket_keys(moto_endpoint, s3_bucket) == keys
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_an_archive_bigger_than_one_object_of_the_store_is_refused_before_registering(
    env, monkeypatch, capsys, simulator
):
    monkeypatch.setenv("SNAPARCHIVE_SEGMENT_LIMIT", "10MiB")
    snapshot_id = archived(capsys, simulator, size=23 * MiB + 5)
    monkeypatch.setenv("SNAPARCHIVE_OBJECT_LIMIT", "20MiB")
    code, _, err = restore(capsys, snapshot_id, "--template", "big", "--local")
    assert code == 1
    assert "SNAPARCHIVE_OBJECT_LIMIT" in one_line(err)
    assert templates(simulator, ZONE) == []


def test_a_checksum_refusal_is_exit_status_3_naming_the_cause(
    env, monkeypatch, capsys, simulator, moto_endpoint, s3_bucket
):
    monkeypatch.setenv("SNAPARCHIVE_SEGMENT_LIMIT", "10MiB")
    snapshot_id = archived(capsys, simulator, size=12 * MiB)
    keys = bucket_keys(moto_endpoint, s3_bucket)
    simulator.set_faults(Faults(register_mismatch=1))
    code, _, err = restore(capsys, snapshot_id, "--template", "t", "--local")
    assert code == 3
    line = one_line(err)
    assert line.startswith("snaparchive: error: checksum refused by Exoscale: checksum mismatch")
    assert templates(simulator, ZONE) == []
    assert bucket_keys(moto_endpoint, s3_bucket) == keys  # the temporary object is gone


def test_an_unreachable_url_is_one_line_naming_the_cause(env, capsys, simulator):
    snapshot_id = archived(capsys, simulator)
    simulator.set_faults(Faults(register_unreachable=1))
    code, _, err = restore(capsys, snapshot_id, "--template", "t", "--local")
    assert code == 1
    line = one_line(err)
    assert "(reason: unavailable): cannot download the template from 127.0.0.1" in line
    assert "X-Amz" not in line and "http" not in line


def test_the_archive_of_a_deleted_instance_still_restores(env, capsys, simulator):
    instance_id, snapshot_id = str(uuid.uuid4()), str(uuid.uuid4())
    simulator.add_instance(instance_id, boot_mode="uefi", default_user="alpine")
    simulator.add_snapshot(snapshot_id, 2 * MiB, instance_id=instance_id)
    assert main(["archive", snapshot_id, "--zone", ZONE, "--local"]) == 0
    deleted = signed_request(simulator, "DELETE", f"/instance/{instance_id}").json()
    wait_for(
        lambda: (
            signed_request(simulator, "GET", f"/operation/{deleted['id']}").json()["state"]
            == "success"
        )
    )
    assert signed_request(simulator, "GET", f"/instance/{instance_id}").status_code == 404
    assert signed_request(simulator, "GET", f"/snapshot/{snapshot_id}").status_code == 404
    capsys.readouterr()
    code, _, err = restore(capsys, snapshot_id, "--template", "t", "--local")
    assert code == 0, err
    [template] = templates(simulator, ZONE)
    assert (template["boot-mode"], template["default-user"]) == ("uefi", "alpine")


def test_a_missing_object_is_one_line_and_nothing_is_registered(
    env, capsys, simulator, moto_endpoint, s3_bucket
):
    snapshot_id = archived(capsys, simulator)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.delete_object(Bucket=s3_bucket, Key=f"{folder(snapshot_id)}/image")
    code, _, err = restore(capsys, snapshot_id, "--template", "t", "--local")
    assert code == 1
    assert one_line(err) == (
        f"snaparchive: error: {folder(snapshot_id)}/image: missing from the store, "
        "though the manifest lists it"
    )
    assert templates(simulator, ZONE) == []


def test_no_url_or_secret_in_any_log_record_or_output(env, capsys, caplog, simulator):
    import redis

    caplog.set_level(logging.DEBUG)  # every logger, botocore's and aiohttp's included
    snapshot_id = archived(capsys, simulator)
    # -vv: the command logs at DEBUG (it sets the root level itself).
    code, out, err = restore(capsys, snapshot_id, "--template", "t", "--local", "--json", "-vv")
    assert code == 0, err
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stored = b" ".join(
            repr(client.hgetall(key)).encode() + (client.get(key) or b"")
            if client.type(key) == b"string"
            else repr(client.hgetall(key)).encode()
            for key in client.scan_iter(f"{env['SNAPARCHIVE_QUEUE']}:*")
            if client.type(key) in (b"hash", b"string")
        ).decode(errors="replace")
    finally:
        client.close()
    assert "restore" in stored  # the restore's record is there, and was looked at
    # Every record but moto's own access log (the store's server: it logs the URLs it serves,
    # as any S3 server may; what goes there is the store operator's business, not ours).
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name != "werkzeug"
    )
    assert "botocore" in logged and "worker" in logged  # DEBUG records of every logger
    for text in (logged, out, err, stored):
        for secret in ("X-Amz-Signature", "X-Amz-Credential", AWS_SECRET, simulator.secret):
            assert secret not in text


def test_a_worker_restores_status_shows_it_and_cancel_stops_it(
    simulator, moto_endpoint, s3_bucket, monkeypatch, capsys
):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    env["SNAPARCHIVE_SEGMENT_LIMIT"] = "10MiB"
    for name, value in env.items():
        if name.startswith(("SNAPARCHIVE_", "EXOSCALE_")):
            monkeypatch.setenv(name, value)
    try:
        snapshot_id = archived(capsys, simulator, size=12 * MiB)
        keys = bucket_keys(moto_endpoint, s3_bucket)
        with worker_process(env):
            done = cli(
                env, "restore", snapshot_id, "--zone", ZONE, "--template", "w",
                "--target-zone", OTHER, "--wait", "--json", timeout=180,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["zone"] == OTHER
            status = json.loads(cli(env, "status", snapshot_id, "--json").stdout)
            assert (status["kind"], status["status"]) == ("restore", "done")
            listed = cli(env, "status").stdout
            assert "restore" in listed and "archive" in listed

            # A registration that never ends: cancel stops following it, the join is deleted.
            simulator.set_faults(Faults(register_stuck=True))
            queued = cli(env, "restore", snapshot_id, "--zone", ZONE, "--template", "x")
            assert queued.returncode == 0, queued.stderr
            wait_for(
                lambda: (
                    json.loads(cli(env, "status", snapshot_id, "--json").stdout)["status"]
                    == "registering"
                ),
                timeout=120,
            )
            cancelled = cli(env, "cancel", snapshot_id)
            assert cancelled.returncode == 0, cancelled.stderr
            assert "cancelled; its temporary object is deleted" in cancelled.stdout
            status = json.loads(cli(env, "status", snapshot_id, "--json").stdout)
            assert (status["kind"], status["status"]) == ("restore", "cancelled")
            deadline = time.monotonic() + 30
            while bucket_keys(moto_endpoint, s3_bucket) != keys and time.monotonic() < deadline:
                time.sleep(0.2)
            assert bucket_keys(moto_endpoint, s3_bucket) == keys
    finally:
        simulator.set_faults(None)
        forget_queue(env)
    assert os.environ["SNAPARCHIVE_QUEUE"] == env["SNAPARCHIVE_QUEUE"]


def test_gc_keeps_the_join_upload_of_a_running_restore(env, capsys, moto_endpoint, s3_bucket):
    from jobs.restore_steps import temporary_key
    from worker.jobstore import RESTORE, RedisJobStore

    snapshot_id = str(uuid.uuid4())
    key = temporary_key("snaparchive/", ZONE, snapshot_id)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_multipart_upload(Bucket=s3_bucket, Key=key)

    async def claim() -> None:
        store = RedisJobStore(REDIS_URL, namespace=env["SNAPARCHIVE_QUEUE"])
        try:
            await store.claim(ZONE, snapshot_id, kind=RESTORE)
        finally:
            await store.close()

    asyncio.run(claim())
    assert main(["gc", "--older-than", "0"]) == 0
    assert "kept: its job is running" in capsys.readouterr().out
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]] == [key]
