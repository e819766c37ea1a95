"""Presigned URLs: shape, expiry to the second, tamper detection."""

from __future__ import annotations

import calendar
from urllib.parse import parse_qsl, urlsplit

import pytest

from worker.simulator.presign import Presigner, PresignError

NOW = calendar.timegm((2026, 1, 31, 12, 0, 0))


def signed(presigner: Presigner, ttl: float = 60) -> tuple[str, dict[str, str]]:
    url = presigner.url("http://h:1", "ch-gva-2", "exp", "snap", NOW + 0.5, ttl)
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def test_url_shape():
    path, params = signed(Presigner(b"k"))
    assert path == "/sos/ch-gva-2/exports/exp/snap"
    assert params["X-Amz-Date"] == "20260131T120000Z"
    assert params["X-Amz-Expires"] == "60"
    assert len(params["X-Amz-Signature"]) == 64


def test_valid_until_expiry_then_expired():
    presigner = Presigner(b"k")
    path, params = signed(presigner)
    presigner.check(path, params, NOW + 60)
    with pytest.raises(PresignError, match="Request has expired") as caught:
        presigner.check(path, params, NOW + 60.001)
    assert caught.value.code == "AccessDenied"


def test_another_key_or_path_does_not_verify():
    path, params = signed(Presigner(b"k"))
    with pytest.raises(PresignError) as caught:
        Presigner(b"other").check(path, params, NOW)
    assert caught.value.code == "SignatureDoesNotMatch"
    with pytest.raises(PresignError):
        Presigner(b"k").check(path.replace("snap", "spam"), params, NOW)


def test_missing_parameters_are_access_denied():
    path, params = signed(Presigner(b"k"))
    del params["X-Amz-Date"]
    with pytest.raises(PresignError) as caught:
        Presigner(b"k").check(path, params, NOW)
    assert caught.value.code == "AccessDenied"


def test_default_key_is_random():
    assert signed(Presigner())[1]["X-Amz-Signature"] != signed(Presigner())[1]["X-Amz-Signature"]
