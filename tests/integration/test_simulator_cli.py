"""``simulate``: banner, serving real HTTP, faults from flags, clean stop, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.fixtures.simulator import signed_request
from worker.simulator.cli import main

pytestmark = pytest.mark.integration

SNAPSHOT = "3f0c1d9e-5b7a-4c1e-8f2d-6a9b0c1d2e3f"
INSTANCE = "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"


class Remote:
    """Enough of a Simulator for :func:`signed_request`: where it is and how to sign."""

    def __init__(self, url: str, key: str, secret: str) -> None:
        self.url, self.key, self.secret = url, key, secret


@contextmanager
def simulate(*args: str) -> Iterator[tuple[subprocess.Popen, dict[str, str], list[str]]]:
    """Start ``python -m worker.simulator.cli --port 0 ARGS``; yield it, its env and banner."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.simulator.cli", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C"):
                break
        env = {}
        for line in banner:
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                env[name] = value.strip("'")
        yield process, env, banner
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serves_prints_its_environment_and_stops_cleanly(stop):
    args = ["--snapshot", f"{SNAPSHOT}:3MiB", "--image-format", "raw", "--secret", "s3cret"]
    with simulate(*args, "--api-errors", "1") as (process, env, banner):
        assert env["EXOSCALE_API_KEY"] and env["EXOSCALE_API_SECRET"] == "s3cret"
        assert env["SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"] == "127.0.0.1"
        endpoint = env["EXOSCALE_API_ENDPOINT"]
        assert endpoint.endswith("/{zone}/v2")
        assert any(SNAPSHOT in line and "raw 3.0 MiB file" in line for line in banner)

        remote = Remote(endpoint.removesuffix("/{zone}/v2"), env["EXOSCALE_API_KEY"], "s3cret")
        assert signed_request(remote, "GET", "/snapshot").status_code == 503  # --api-errors 1
        listed = signed_request(remote, "GET", "/snapshot").json()["snapshots"]
        assert [s["id"] for s in listed] == [SNAPSHOT]

        process.send_signal(stop)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "stopping" in err
        assert "Traceback" not in err


def test_seeds_a_default_snapshot_exported_as_qcow2():
    with simulate() as (process, env, banner):
        assert any("qcow2" in line and "10 GiB disk" in line for line in banner)
        remote = Remote(
            env["EXOSCALE_API_ENDPOINT"].removesuffix("/{zone}/v2"),
            env["EXOSCALE_API_KEY"],
            env["EXOSCALE_API_SECRET"],
        )
        assert len(signed_request(remote, "GET", "/snapshot").json()["snapshots"]) == 1
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 0


def test_instances_with_labels_a_snapshot_quota_and_registration_faults():
    args = [
        "--instance",
        f"{INSTANCE}:backup=nightly,tier=web",
        "--zone",
        "de-fra-1",
        "--snapshot-quota",
        "1",
        "--register-unreachable",
        "1",
    ]
    with simulate(*args) as (process, env, banner):
        assert any(INSTANCE in line and "backup=nightly,tier=web" in line for line in banner)
        assert "snapshots: none" in banner  # no default snapshot beside the instances
        remote = Remote(
            env["EXOSCALE_API_ENDPOINT"].removesuffix("/{zone}/v2"),
            env["EXOSCALE_API_KEY"],
            env["EXOSCALE_API_SECRET"],
        )
        listed = signed_request(remote, "GET", "/instance", zone="de-fra-1").json()["instances"]
        assert [(i["id"], i["labels"]) for i in listed] == [
            (INSTANCE, {"backup": "nightly", "tier": "web"})
        ]
        path = f"/instance/{INSTANCE}:create-snapshot"
        assert signed_request(remote, "POST", path, zone="de-fra-1").ok
        assert signed_request(remote, "POST", path, zone="de-fra-1").status_code == 403
        shown = requests.get(f"{remote.url}/_simulator/faults", timeout=10).json()
        assert shown["global"]["register_unreachable"] == 1
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--instance", "not-a-uuid"], "must be a UUID"),
        (["--instance", f"{INSTANCE}:backup"], "ID[:label=value"),
        (["--instance", f"{INSTANCE}:bad key=x"], "label key"),
        (["--instance", INSTANCE, "--instance", INSTANCE], "already exists"),
        (["--snapshot-quota", "-2"], "-1 (unlimited)"),
        (["--register-seconds", "soon"], "number of seconds"),
        (["--snapshot", "not-a-uuid:64MiB"], "must be a UUID"),
        (["--snapshot", f"{SNAPSHOT}:12parsecs"], "not a size"),
        (["--snapshot", SNAPSHOT], "ID:SIZE"),
        (["--snapshot", f"{SNAPSHOT}:1MiB", "--snapshot", f"{SNAPSHOT}:2MiB"], "already exists"),
        (["--api-error-status", "404"], "500..599"),
        (["--slow", "fast"], "not a size"),
        (["--port", "99999"], "0..65535"),
    ],
)
def test_bad_input_is_a_clear_message_and_status_2(args, message, capsys):
    try:
        status = main(args)
    except SystemExit as exit:  # argparse's way of refusing an argument
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_bad_input_process_shows_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "worker.simulator.cli", "--snapshot", "nope:1MiB"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "snapshot ID must be a UUID, got 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
