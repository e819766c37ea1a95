"""No secret and no signature in the logs of a real archive, every logger at DEBUG (botocore,
aiohttp, dramatiq, ours), in both formats: ``archive --local`` and ``worker``."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.integration.pipeline_env import (
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    worker_process,
)
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/11"
#: Signatures as botocore and presigned URLs print them, unmasked: a hex digest after
#: ``Signature=`` or ``Signature:`` (botocore.auth's "Signature:\n...").
SIGNATURE = re.compile(r"(?i)signature['\"]?\s*[:=]\s*(?:b?['\"])?\s*[0-9a-f]{16,}")


@pytest.fixture(params=["text", "json"])
def env(request, simulator, moto_endpoint, s3_bucket):
    values = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    values["SNAPARCHIVE_LOG_FORMAT"] = request.param
    # Secrets no test or log would print by chance; moto takes any key.
    values["AWS_SECRET_ACCESS_KEY"] = f"aws-secret-{uuid.uuid4().hex}"
    values["AWS_ACCESS_KEY_ID"] = "AKIATESTREDACTION01"
    yield values
    forget_queue(values)


def _check(env: dict[str, str], output: str, snapshot_id: str, *loggers: str) -> list[dict]:
    """The output is free of secrets; it holds lines of ``loggers`` (DEBUG was on) and, in
    the JSON format, every log line parses and some carry the job. Returns the JSON lines."""
    for secret in (env["EXOSCALE_API_SECRET"], env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in output
    found = SIGNATURE.search(output)
    assert found is None, output[max(0, found.start() - 300) : found.end() + 100]
    assert not re.search(r"X-Amz-Signature=(?!<redacted>)", output)
    # botocore signed every S3 request and printed it: what was masked is there, masked.
    assert "<redacted>" in output
    if env["SNAPARCHIVE_LOG_FORMAT"] == "text":
        for logger in loggers:
            assert f" {logger}" in output or f"[{logger}" in output, logger
        return []
    # Log lines are JSON objects; the progress notes of `archive` are plain lines.
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    names = {line["logger"] for line in lines}
    for logger in loggers:
        assert any(name.startswith(logger) for name in names), (logger, names)
    assert any(line.get("job") == f"{ZONE}/{snapshot_id}" for line in lines)
    assert any(line["level"] == "DEBUG" for line in lines)
    return lines


def test_a_local_archive_logs_no_secret(env, simulator):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    done = cli(env, "-vv", "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    _check(env, done.stderr, snapshot_id, "botocore", "worker")


def test_a_worker_logs_no_secret(env, simulator, tmp_path):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    log = tmp_path / "worker.log"
    with worker_process(env, log=log, before=("-vv",)):
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json")
    output = log.read_text()
    assert done.returncode == 0, done.stderr + output[-3000:]
    lines = _check(env, output, snapshot_id, "botocore", "dramatiq", "worker")
    if lines:
        # The step drivers say which step a line is about.
        assert any(line.get("step") == "transfer_snapshot" for line in lines)
