"""Our EXO2 signer against the vendor's requests-exoscale-auth."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from exoscale_auth import ExoscaleV2Auth

from worker import signing

KEY = "EXOa1b2c3d4e5f6a7b8c9d0e1f2"
SECRET = "s3cr3t-For-Docs-Only-0123456789abcdefghij"
EXPIRES = 1767225600

SNAP = "5f3c8a9e-1d2b-4c6e-9a7f-0b1c2d3e4f50"
GVA = "https://api-ch-gva-2.exoscale.com/v2"
CASES = [
    ("GET", "https://api-ch-gva-2.exoscale.com/v2/template?visibility=private&family=ubuntu", None),
    ("GET", "https://api-ch-gva-2.exoscale.com/v2/snapshot", None),
    ("POST", "https://api-ch-gva-2.exoscale.com/v2/template", b'{"name":"x","url":"https://a/b"}'),
    (
        "POST",
        f"{GVA}/snapshot/{SNAP}:export",
        None,
    ),
    (
        "DELETE",
        f"https://api-de-fra-1.exoscale.com/v2/snapshot/{SNAP}",
        None,
    ),
    ("GET", "http://127.0.0.1:8080/ch-gva-2/v2/operation/abc?x=%2Fslash&a=b", None),
]


def vendor_header(method: str, url: str, body: bytes | None) -> str:
    request = requests.Request(method, url, data=body).prepare()
    ExoscaleV2Auth(KEY, SECRET)._sign_request(request, EXPIRES)
    return request.headers["Authorization"]


@pytest.mark.parametrize(("method", "url", "body"), CASES)
def test_header_matches_vendor_signer(method: str, url: str, body: bytes | None) -> None:
    parts = urlsplit(url)
    ours = signing.authorization(
        KEY, SECRET, method, parts.path, body or b"", parse_qsl(parts.query), EXPIRES
    )
    assert ours == vendor_header(method, url, body)


def test_documented_vectors() -> None:
    export = signing.authorization(
        KEY,
        SECRET,
        "POST",
        "/v2/snapshot/5f3c8a9e-1d2b-4c6e-9a7f-0b1c2d3e4f50:export",
        expires=EXPIRES,
    )
    assert export.endswith("signature=qy+TcuZsi376F6M85sfSvHVve7vFHHtb/w6+zw9iNp4=")
    upstream = signing.authorization("EXO...", "secret", "GET", "/v2/zone", expires=3376684800)
    assert upstream.split("signature=")[1] == signing.signature(
        "secret", b"GET /v2/zone\n\n\n\n3376684800"
    )


def test_verify_accepts_own_and_rejects_tampering() -> None:
    header = signing.authorization(KEY, SECRET, "GET", "/v2/snapshot", expires=EXPIRES)
    secrets = {KEY: SECRET}
    assert signing.verify(header, secrets, "GET", "/v2/snapshot", b"", [], now=EXPIRES - 1) == KEY
    with pytest.raises(signing.SignatureError, match="expired"):
        signing.verify(header, secrets, "GET", "/v2/snapshot", b"", [], now=EXPIRES + 1)
    with pytest.raises(signing.SignatureError, match="Invalid request signature"):
        signing.verify(header, secrets, "GET", "/v2/zone", b"", [], now=EXPIRES - 1)
    with pytest.raises(signing.SignatureError, match="unknown API key"):
        signing.verify(header, {"other": SECRET}, "GET", "/v2/snapshot", b"", [], now=0)
    with pytest.raises(signing.SignatureError, match="malformed"):
        signing.verify("Bearer x", secrets, "GET", "/v2/snapshot", b"", [], now=0)
