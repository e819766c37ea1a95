"""The ``snaparchive`` CLI's contract: --local runs, JSON output, exit codes and messages."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.pipeline_env import (
    ZONE,
    bucket_is_clean,
    forget_queue,
    pipeline_env,
    stored_md5,
)
from worker.cli import main
from worker.simulator import Faults
from worker.units import MiB


@pytest.fixture
def env(monkeypatch, simulator, moto_endpoint, s3_bucket):
    # Not test_pipeline's database 5, which it flushes: --local runs keep their jobs in Redis.
    values = pipeline_env(
        simulator, moto_endpoint, s3_bucket, "redis://127.0.0.1:6379/4", "redis://127.0.0.1:6379/4"
    )
    for name in list(values):
        if name.startswith(("SNAPARCHIVE_", "EXOSCALE_", "AWS_")):
            monkeypatch.setenv(name, values[name])
    yield values
    forget_queue(values)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_local_archive_prints_one_json_object(env, capsys, simulator, moto_endpoint, s3_bucket):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 11 * MiB, zone=ZONE)
    code, out, err = run(capsys, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "done"
    assert result["md5"] == simulator.image_md5(snapshot_id)
    assert result["size"] == 11 * MiB
    assert [o["size"] for o in result["objects"]] == [11 * MiB]
    assert stored_md5(moto_endpoint, s3_bucket, result) == result["md5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["archive", str(uuid.uuid4()), "--zone", "mars-1"], "like ch-gva-2, got 'mars-1'"),
        (["status", str(uuid.uuid4()), "--zone", "ch-gva-2\n"], "like ch-gva-2, got"),
        (["archive", "not-a-uuid", "--zone", ZONE], "snapshot id must be a UUID"),
        (["archive", str(uuid.uuid4())], "--zone"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(env, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("variable", ["SNAPARCHIVE_S3_BUCKET", "EXOSCALE_API_KEY"])
def test_missing_configuration_exits_2_naming_the_variable(env, capsys, monkeypatch, variable):
    monkeypatch.delenv(variable)
    code, _, err = run(capsys, "archive", str(uuid.uuid4()), "--zone", ZONE, "--local")
    assert code == 2
    assert err.strip() == f"snaparchive: configuration error: {variable} is not set"


def test_unknown_snapshot_exits_1_with_one_line(env, capsys):
    snapshot_id = str(uuid.uuid4())
    code, _, err = run(capsys, "archive", snapshot_id, "--zone", ZONE, "--local")
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "HTTP 404" in err and snapshot_id in err


def test_a_zone_not_in_our_list_is_the_apis_to_refuse(env, capsys):
    # Well formed but unknown to the API (and to snaparchive's list of known zones): the job
    # runs, the API answers 404, and the job is found again by the zone it ran in.
    snapshot_id = str(uuid.uuid4())
    code, _, err = run(capsys, "archive", snapshot_id, "--zone", "ch-xyz-9", "--local")
    assert code == 1
    assert err.count("\n") == 1 and "HTTP 404" in err and "unknown zone: ch-xyz-9" in err
    code, out, err = run(capsys, "status", snapshot_id, "--zone", "ch-xyz-9", "--json")
    assert code == 0, err
    assert (json.loads(out)["zone"], json.loads(out)["status"]) == ("ch-xyz-9", "failed")


def test_failed_export_operation_names_the_reason(env, capsys, simulator, moto_endpoint, s3_bucket):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    simulator.set_faults(Faults(export_failures=1, failure_reason="fault"), snapshot_id=snapshot_id)
    code, _, err = run(capsys, "archive", snapshot_id, "--zone", ZONE, "--local")
    assert code == 1
    assert "ended in failure (reason: fault)" in err
    assert bucket_is_clean(moto_endpoint, s3_bucket)


def test_corrupted_download_leaves_no_object(env, capsys, simulator, moto_endpoint, s3_bucket):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 12 * MiB, zone=ZONE)
    simulator.set_faults(Faults(corrupt_at=7 * MiB), snapshot_id=snapshot_id)
    code, _, err = run(capsys, "archive", snapshot_id, "--zone", ZONE, "--local")
    assert code == 1
    assert "md5 mismatch: expected" in err
    assert bucket_is_clean(moto_endpoint, s3_bucket)


def test_restore_and_verify_read_the_archive_back(
    env, capsys, simulator, moto_endpoint, s3_bucket, tmp_path
):
    import boto3

    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 7 * MiB, zone=ZONE)
    code, out, _ = run(capsys, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert code == 0
    key = json.loads(out)["objects"][0]["key"]
    target = tmp_path / "disk.qcow2"
    code, _, err = run(capsys, "restore", snapshot_id, "--zone", ZONE, "--output", str(target))
    assert code == 0, err
    with simulator.open_image(snapshot_id) as original:
        assert target.read_bytes() == original.read()
    assert run(capsys, "restore", snapshot_id, "--zone", ZONE, "--verify")[0] == 0
    # Bit rot in the bucket: same size, other bytes.
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"\0" * (7 * MiB))
    code, _, err = run(capsys, "restore", snapshot_id, "--zone", ZONE, "--output", str(target))
    assert code == 3 and "md5 mismatch" in err  # a failed verification
    with simulator.open_image(snapshot_id) as original:
        assert target.read_bytes() == original.read()  # the good copy was not overwritten
    assert not list(tmp_path.glob(".*partial"))


def test_restore_of_a_missing_archive_exits_1(env, capsys):
    code, _, err = run(capsys, "restore", str(uuid.uuid4()), "--zone", ZONE, "--verify")
    assert code == 1 and "no verified archive" in err
