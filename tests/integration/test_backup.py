"""Backups on a schedule, end to end (issue 11): a policy snapshots its instances, archives
them verified, rotates its own snapshots, applies retention; one instance failing does not
stop the others. The CLI as a subprocess, the simulator over HTTP, moto, real Redis."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from tests.integration.pipeline_env import ZONE, cli, forget_queue, pipeline_env, worker_process
from worker.simulator import Faults

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/10"
WEB_A = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
WEB_B = "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"
OTHER = "11111111-2222-4333-8444-555555555555"

POLICY = f"""
[[policy]]
name = "web"
zone = "{ZONE}"
labels = {{ backup = "nightly" }}
schedule = "0 3 * * *"
snapshots_keep = 1

[policy.keep]
last = 2
"""


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket, tmp_path):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    policies = tmp_path / "snaparchive.toml"
    policies.write_text(POLICY)
    env["SNAPARCHIVE_POLICIES"] = str(policies)
    simulator.add_instance(
        WEB_A,
        ZONE,
        labels={"backup": "nightly", "tier": "web"},
        boot_mode="uefi",
        default_user="debian",
    )
    simulator.add_instance(WEB_B, ZONE, labels={"backup": "nightly"})
    simulator.add_instance(OTHER, ZONE, labels={"backup": "weekly"})
    yield env
    forget_queue(env)


def _backup(env, *options: str) -> tuple[int, dict]:
    done = cli(env, "backup", "web", "--json", *options, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def _snapshots(simulator, instance_id: str) -> set[str]:
    """The instance's snapshots in the cloud (not being deleted), read over the API."""
    return {
        s["id"]
        for s in _api_snapshots(simulator)
        if s.get("instance", {}).get("id") == instance_id and s["state"] != "deleting"
    }


def _api_snapshots(simulator) -> list[dict]:
    from tests.fixtures.simulator import signed_request

    return signed_request(simulator, "GET", "/snapshot").json()["snapshots"]


def _archives(env, *options: str) -> list[dict]:
    listed = cli(env, "archives", "list", "--json", *options)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_a_policy_backs_up_rotates_and_keeps_what_it_should(env, simulator):
    # A snapshot of WEB_A taken by hand: the policy must never delete it.
    by_hand = str(uuid.uuid4())
    simulator.add_snapshot(by_hand, 8 * 1024 * 1024, zone=ZONE, instance_id=WEB_A)

    runs = []
    for _ in range(3):
        code, report = _backup(env, "--local")
        assert code == 0, report
        runs.append(report)
        time.sleep(1.1)  # snapshots a second apart: their times order them

    for report in runs:
        assert report["policy"] == "web"
        instances = {i["instance_id"]: i for i in report["instances"]}
        assert set(instances) == {WEB_A, WEB_B}  # by label; OTHER is not nightly
        for item in instances.values():
            assert item["status"] == "done" and item["error"] is None
            assert item["manifest"].endswith(f"/{item['snapshot_id']}/manifest.json")
            assert len(item["md5"]) == 32

    newest = {i["instance_id"]: i["snapshot_id"] for i in runs[-1]["instances"]}
    for instance_id in (WEB_A, WEB_B):
        # Rotation: of its own snapshots, the policy keeps the newest one in the cloud...
        own = {
            i["snapshot_id"]
            for r in runs
            for i in r["instances"]
            if i["instance_id"] == instance_id
        }
        left = _snapshots(simulator, instance_id)
        assert left & own == {newest[instance_id]}
    # ... and never touches one it did not take.
    assert by_hand in _snapshots(simulator, WEB_A)

    # Retention: the two newest archives of each instance stay, with the manifests' facts.
    archives = _archives(env, "--zone", ZONE)
    for instance_id in (WEB_A, WEB_B):
        mine = [a for a in archives if a["instance_id"] == instance_id]
        expected = [
            i["snapshot_id"]
            for r in runs[1:]
            for i in r["instances"]
            if i["instance_id"] == instance_id
        ]
        assert sorted(a["snapshot_id"] for a in mine) == sorted(expected)
        assert all(a["policy"] == "web" for a in mine)
    restored = cli(env, "restore", newest[WEB_A], "--zone", ZONE, "--verify")
    assert restored.returncode == 0, restored.stderr

    # forget --dry-run: retention ran after each backup, so the four archives left are kept,
    # each with the rule that keeps it.
    planned = cli(env, "forget", "--policy", "web", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    rows = json.loads(planned.stdout)
    assert len(rows) == 4 and {r["action"] for r in rows} == {"keep"}
    for row in rows:
        assert set(row) >= {
            "zone",
            "instance_id",
            "snapshot_id",
            "created_at",
            "manifest",
            "action",
            "reasons",
        }
        assert "last" in row["reasons"]


def test_one_instance_failing_does_not_stop_the_other(env, simulator):
    # The first export fails (an operation in ``failure``): that instance's archive fails,
    # the other's does not.
    simulator.set_faults(Faults(export_failures=1))
    code, report = _backup(env, "--local")
    statuses = {i["instance_id"]: i["status"] for i in report["instances"]}
    assert sorted(statuses.values()) == ["done", "failed"]
    assert code == 1
    failed = next(i for i in report["instances"] if i["status"] == "failed")
    assert failed["error"] and "\n" not in failed["error"]


def test_a_policy_run_through_the_workers(env, simulator):
    with worker_process(env):
        code, report = _backup(env, "--wait")
    assert code == 0, report
    assert {i["status"] for i in report["instances"]} == {"done"}
    archives = _archives(env, "--zone", ZONE)
    assert {a["instance_id"] for a in archives} == {WEB_A, WEB_B}

    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["policies"]
    assert (row["policy"], row["last_run"], row["result"]) == ("web", report["run"], "ok")
    assert row["next_run"].endswith("T03:00:00Z")
    points = {i["instance_id"]: i for i in row["instances"]}
    assert set(points) == {WEB_A, WEB_B}
    assert all(0 <= p["age_seconds"] < 600 for p in points.values())
    text = cli(env, "status")
    assert "RECOVERY POINTS" in text.stdout and "web" in text.stdout


def test_policies_check_shows_instances_runs_and_retention(env):
    checked = cli(env, "policies", "check", "--json")
    assert checked.returncode == 0, checked.stderr
    (policy,) = json.loads(checked.stdout)["policies"]
    assert sorted(policy["instances"]) == sorted([WEB_A, WEB_B])
    assert len(policy["next_runs"]) == 3 and all(
        t.endswith("T03:00:00Z") for t in policy["next_runs"]
    )
    assert policy["keep"] == {"last": 2}


def test_a_bad_policy_file_is_one_line_and_exit_2(env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.replace("last = 2", "daily = -1"))
    checked = cli(env, "policies", "check", "--policies", str(bad))
    assert checked.returncode == 2
    assert checked.stderr.strip().count("\n") == 0
    assert 'policy "web": keep.daily: must be a whole number >= 0, got -1' in checked.stderr


def test_a_removal_cut_short_after_the_manifest_leaves_objects_gc_removes(env, simulator):
    code, report = _backup(env, "--local")
    assert code == 0
    first = report["instances"][0]
    s3 = boto3.client("s3", endpoint_url=env["SNAPARCHIVE_S3_ENDPOINT"], region_name="us-east-1")
    bucket = env["SNAPARCHIVE_S3_BUCKET"]
    # The crash: the manifest (the commit point) is deleted, the objects are not yet.
    s3.delete_object(Bucket=bucket, Key=first["manifest"])
    folder = first["manifest"].rpartition("/")[0] + "/"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) > 0
    assert first["snapshot_id"] not in {a["snapshot_id"] for a in _archives(env)}

    # Kept while younger than the age guard (a commit may be in progress)...
    kept = cli(env, "gc")
    assert kept.returncode == 0, kept.stderr
    assert s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) > 0
    # ... and removed without it; the other instance's archive stays whole.
    swept = cli(env, "gc", "--older-than", "0")
    assert swept.returncode == 0, swept.stderr
    assert "1 archive folder(s) without a manifest, 1 deleted" in swept.stdout
    assert s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) == 0
    other = report["instances"][1]
    verified = cli(env, "restore", other["snapshot_id"], "--zone", ZONE, "--verify")
    assert verified.returncode == 0, verified.stderr
