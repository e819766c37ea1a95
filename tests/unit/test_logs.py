"""Log lines: text or JSON, the job context, and secrets masked for every logger."""

from __future__ import annotations

import io
import json
import logging

import pytest

from worker import logs
from worker.errors import ConfigError

PRESIGNED = (
    "https://sos-ch-gva-2.exo.io/exports/abc/disk?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=EXO123%2F20260101%2Fch-gva-2%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "ab12" * 16
)
SECRET = "exoscale-api-secret-value"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"GET {PRESIGNED} 200", "ab12ab12"),
        (
            "url=https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1&Signature=c2lnbmF0dXJl",
            "c2lnbmF0",
        ),
        ("http://127.0.0.1:1/d?expires=1&signature=0123456789abcdef", "0123456789abcdef"),
        (
            "Authorization: EXO2-HMAC-SHA256 credential=EXO1,expires=1,signature=beefbeefbeef",
            "beef",
        ),
        (
            "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=A/x, Signature=99aa99aa99aa'}",
            "99aa",
        ),
        ('{"authorization": "Bearer tok-tok-tok-tok"}', "tok-tok"),
        ("Signature:\n5f5f5f5f5f5f5f5f5f5f", "5f5f5f5f"),
        ("'X-Amz-Security-Token': b'FwoGZXIvYXdzEBYaDHsessiontoken'", "FwoGZXIv"),
        ("connecting to amqp://snaparchive:hunter2hunter2@rabbit:5672/", "hunter2"),
        (f"key {SECRET} and {AWS_SECRET}", "secret-value"),
        (f"key {SECRET} and {AWS_SECRET}", "EXAMPLEKEY"),
    ],
)
def test_redact_masks_credentials(text: str, gone: str) -> None:
    masked = logs.redact(text, [AWS_SECRET, SECRET])
    assert gone not in masked
    assert logs.MASK in masked


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:9000/bucket/key?uploadId=abc&partNumber=3",
        "exoscale: HTTP 403: bad or expired signature",
        "download from sos-ch-gva-2.exo.io failed at byte 5 after 8 attempts",
    ],
)
def test_redact_leaves_the_rest_alone(text: str) -> None:
    assert logs.redact(text, [SECRET]) == text


def test_short_secret_values_are_not_masked() -> None:
    assert logs.secret_values(
        {"EXOSCALE_API_SECRET": "abc", "AWS_SECRET_ACCESS_KEY": "long-one"}
    ) == ["long-one"]


@pytest.fixture
def root_logging(monkeypatch):
    """The root logger's configuration, restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setenv("EXOSCALE_API_SECRET", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _emit_everywhere() -> None:
    """What botocore, aiohttp, dramatiq and our code might print at DEBUG."""
    logging.getLogger("botocore.endpoint").debug(
        "Sending http request: <AWSPreparedRequest url=%s, headers=%r>",
        "http://127.0.0.1:9000/b/k?uploadId=1",
        {"Authorization": b"AWS4-HMAC-SHA256 Credential=A/x, Signature=" + b"cd" * 32},
    )
    logging.getLogger("aiohttp.client").debug("GET %s", PRESIGNED)
    logging.getLogger("dramatiq.worker").debug("secret %s in a message", SECRET)
    with logs.job_context("ch-gva-2", "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c", "transfer_snapshot"):
        try:
            raise RuntimeError(f"failed: {PRESIGNED} with {AWS_SECRET}")
        except RuntimeError:
            logging.getLogger("worker.download").exception("download failed")


def _assert_clean(output: str) -> None:
    for secret in (SECRET, AWS_SECRET, "cdcdcdcd", "ab12ab12", "X-Amz-Credential"):
        assert secret not in output
    assert output.count(logs.MASK) >= 5


def test_text_lines_are_masked_for_every_logger(root_logging, monkeypatch) -> None:
    monkeypatch.delenv(logs.FORMAT_VARIABLE, raising=False)
    stream = io.StringIO()
    logs.setup(logging.DEBUG, stream=stream, replace=True)
    _emit_everywhere()
    output = stream.getvalue()
    _assert_clean(output)
    assert "DEBUG botocore.endpoint: Sending http request" in output
    assert "Traceback (most recent call last)" in output  # the traceback, masked too


def test_json_lines_carry_the_job_and_are_masked(root_logging, monkeypatch) -> None:
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "json")
    stream = io.StringIO()
    logs.setup(logging.DEBUG, stream=stream, replace=True)
    _emit_everywhere()
    output = stream.getvalue()
    _assert_clean(output)
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["logger"] for line in lines] == [
        "botocore.endpoint",
        "aiohttp.client",
        "dramatiq.worker",
        "worker.download",
    ]
    first, last = lines[0], lines[-1]
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "DEBUG" and first["time"].endswith("Z")
    assert last["job"] == "ch-gva-2/6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
    assert (last["zone"], last["step"]) == ("ch-gva-2", "transfer_snapshot")
    assert last["level"] == "ERROR" and "RuntimeError" in last["exception"]


def test_a_host_s_handlers_get_the_filter_too(root_logging, monkeypatch) -> None:
    # As under pytest or in a host application: their handler is kept, and masks.
    monkeypatch.delenv(logs.FORMAT_VARIABLE, raising=False)
    stream = io.StringIO()
    theirs = logging.StreamHandler(stream)
    for handler in list(root_logging.handlers):
        root_logging.removeHandler(handler)
    root_logging.addHandler(theirs)
    logs.setup(logging.DEBUG)
    assert root_logging.handlers == [theirs]
    _emit_everywhere()
    _assert_clean(stream.getvalue())


def test_an_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="SNAPARCHIVE_LOG_FORMAT: text or json, not 'xml'"):
        logs.log_format({"SNAPARCHIVE_LOG_FORMAT": "xml"})
    assert logs.log_format({"SNAPARCHIVE_LOG_FORMAT": "JSON"}) == "json"
    assert logs.log_format({}) == "text"
