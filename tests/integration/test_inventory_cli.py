"""``snaparchive snapshots list``: JSON, table and exit codes, in-process and as the script."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fakes.instavm import FakeInstaVM
from tests.fixtures.manifests import put_manifest
from worker.providers import cli

REQUIRED = {"provider", "region", "id", "name", "status", "size_bytes", "created_at", "archived"}
SCRIPT = Path(sys.executable).with_name("snaparchive")


def env_for(genesis: FakeGenesisCloud, instavm: FakeInstaVM) -> dict[str, str]:
    return {
        "GENESISCLOUD_TOKEN": genesis.token,
        "GENESISCLOUD_API_ENDPOINT": genesis.url,
        "INSTAVM_API_KEY": instavm.api_key,
        "INSTAVM_API_ENDPOINT": instavm.url,
    }


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    status = cli.run(parser.parse_args(argv), env=env, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_json_records_with_coverage(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM, moto_endpoint: str, s3_bucket: str
) -> None:
    done, todo = genesis_api.add(size=10), genesis_api.add()
    vm = instavm_api.add(size_bytes=12345)
    put_manifest(
        moto_endpoint,
        s3_bucket,
        f"snaparchive/genesiscloud/NORD-NO-KRS-1/{done['id']}/manifest.json",
    )
    env = {
        **env_for(genesis_api, instavm_api),
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
    }
    status, out, err = run(["--json"], env)
    assert status == 0
    records = {r["id"]: r for r in json.loads(out)}
    assert all(set(r) >= REQUIRED for r in records.values())
    assert records[done["id"]]["archived"] is True
    assert records[done["id"]]["size_bytes"] == 10 * 2**30
    assert records[done["id"]]["created_at"] == "2024-01-02T10:47:46.786000+00:00"
    assert records[done["id"]]["raw"] == done
    assert records[todo["id"]]["archived"] is False
    assert records[vm["id"]]["size_bytes"] == 12345
    assert records[vm["id"]]["region"] == "global"
    assert "note: exoscale: skipped, EXOSCALE_API_KEY is not set" in err
    assert "note: gcore: skipped, GCORE_API_KEY is not set" in err


def test_table_says_unknown_without_a_bucket(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM
) -> None:
    genesis_api.add(name="db\x1b[2J-nightly", status="pending_delete")
    status, out, err = run(["--provider", "genesiscloud"], env_for(genesis_api, instavm_api))
    assert status == 0
    header, row = out.splitlines()
    assert header.split() == list(cli.COLUMNS)
    assert "db?[2J-nightly" in row  # no escape sequence reaches the terminal
    assert "deleting (pending_delete)" in row
    assert "128.0 GiB" in row
    assert row.split()[-1] == "unknown"
    assert err == "note: archived: unknown, SNAPARCHIVE_S3_BUCKET is not set\n"


def test_failing_provider_exits_1_and_keeps_the_others(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM
) -> None:
    instavm_api.add()
    env = {**env_for(genesis_api, instavm_api), "GENESISCLOUD_TOKEN": "revoked-token"}
    status, out, err = run(["--json", "--provider", "genesiscloud", "instavm"], env)
    assert status == 1
    assert [r["provider"] for r in json.loads(out)] == ["instavm"]
    assert (
        "error: genesiscloud: GET /compute/v1/snapshots: HTTP 401: Invalid or missing API token"
        in err
    )
    assert "revoked-token" not in out + err


def test_region_a_named_provider_cannot_have_is_a_usage_error(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM
) -> None:
    env = {**env_for(genesis_api, instavm_api), "EXOSCALE_API_KEY": "k", "EXOSCALE_API_SECRET": "s"}
    status, out, err = run(["--provider", "exoscale", "--zone", "NORD-NO-KRS-1"], env)
    assert (status, out) == (2, "")
    assert err.startswith("snaparchive: error: exoscale: 'NORD-NO-KRS-1' is not an Exoscale zone")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"GCORE_API_KEY": "k", "GCORE_PROJECT_ID": "abc"},
            "gcore: GCORE_PROJECT_ID must be a number, not 'abc'",
        ),
        (
            {"GCORE_API_KEY": "k", "GCORE_PROJECT_ID": "1", "GCORE_REGION_ID": "lux"},
            "gcore: GCORE_REGION_ID must be a number, not 'lux'",
        ),
        (
            {"GCORE_API_KEY": "k", "GCORE_PROJECT_ID": "1", "GCORE_API_ENDPOINT": "api.gcore"},
            "gcore: GCORE_API_ENDPOINT: not an http(s) URL: 'api.gcore'",
        ),
        ({"GENESISCLOUD_API_ENDPOINT": "ftp://x"}, "genesiscloud: GENESISCLOUD_API_ENDPOINT"),
        ({"INSTAVM_API_ENDPOINT": "https://:1/"}, "instavm: INSTAVM_API_ENDPOINT"),
    ],
)
def test_malformed_provider_variables_exit_2_naming_them(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM, extra, message
) -> None:
    instavm_api.add()
    status, out, err = run(["--json"], {**env_for(genesis_api, instavm_api), **extra})
    assert (status, out) == (2, "")
    assert err.startswith(f"snaparchive: configuration error: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("provider", "credential"),
    [("gcore", "GCORE_API_KEY"), ("exoscale", "EXOSCALE_API_KEY")],
)
def test_a_provider_asked_for_without_its_credential_exits_2(
    genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM, provider, credential
) -> None:
    # Not a silent skip: the operator asked for it.
    argv = ["--provider", "instavm", provider]
    status, out, err = run(argv, env_for(genesis_api, instavm_api))
    assert (status, out) == (2, "")
    assert err == (
        f"snaparchive: configuration error: {provider}: asked for with --provider, "
        f"but {credential} is not set\n"
    )


def test_console_script(genesis_api: FakeGenesisCloud, instavm_api: FakeInstaVM) -> None:
    genesis_api.add()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EXOSCALE_", "GCORE_"))}
    env = {**base, **env_for(genesis_api, instavm_api)}
    env.pop("SNAPARCHIVE_S3_BUCKET", None)
    listed = subprocess.run(
        [SCRIPT, "snapshots", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert [r["provider"] for r in json.loads(listed.stdout)] == ["genesiscloud"]
    bad = subprocess.run(
        [SCRIPT, "snapshots", "list", "--provider", "aws"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "invalid choice: 'aws'" in bad.stderr
    assert "Traceback" not in bad.stderr
