"""``snaparchive worker`` passes Dramatiq's own options on; ``-v`` works after a subcommand."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.pipeline_env import SNAPARCHIVE, cli, forget_queue, pipeline_env
from worker.cli import build_parser

REDIS = "redis://127.0.0.1:6379/4"


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    values = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS, REDIS)
    yield values
    forget_queue(values)


def test_options_after_double_dash_reach_dramatiq(env) -> None:
    shown = cli(env, "worker", "--processes", "1", "--", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "usage: dramatiq" in shown.stdout  # Dramatiq's own help: the option reached it


def test_a_dramatiq_option_takes_effect(env, tmp_path) -> None:
    pid_file = tmp_path / "worker.pid"
    process = subprocess.Popen(
        [
            SNAPARCHIVE,
            "worker",
            "--processes",
            "1",
            "--threads",
            "1",
            "--",
            "--pid-file",
            str(pid_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        # snaparchive worker execs Dramatiq: the pid Dramatiq wrote is the worker's own.
        assert pid_file.read_text().strip() == str(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize(
    "extra", [["--queues", "other"], ["-Q", "other"], ["--threads=8"], ["-p4"]]
)
def test_options_snaparchive_sets_are_refused_after_double_dash(env, extra) -> None:
    refused = cli(env, "worker", "--", *extra)
    assert refused.returncode == 2
    assert "snaparchive worker sets it" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_verbose_after_the_subcommand(env) -> None:
    for argv in (["status", "-v"], ["-v", "status"], ["status", "--verbose", "--json"]):
        assert build_parser(argv).parse_args(argv).verbose == 1
    assert build_parser(["status", "-vv"]).parse_args(["status", "-vv"]).verbose == 2
    assert build_parser(["status"]).parse_args(["status"]).verbose == 0
    shown = cli(env, "status", "-v", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["jobs"] == []
