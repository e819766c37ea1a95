"""Which export URLs the download accepts, and how it backs off."""

import pytest

from worker.download import check_download_url
from worker.errors import DownloadRefused

EXO = ("*.exo.io",)
SECRET = "X-Amz-Signature=abcdef0123456789"


@pytest.mark.parametrize(
    ("url", "hosts", "host"),
    [
        (f"https://sos-ch-gva-2.exo.io/bucket/img?{SECRET}", EXO, "sos-ch-gva-2.exo.io"),
        (f"https://SOS-CH-GVA-2.EXO.IO/b/img?{SECRET}", EXO, "sos-ch-gva-2.exo.io"),
        ("http://127.0.0.1:8080/ch-gva-2/img", ("127.0.0.1",), "127.0.0.1"),
        ("http://[::1]:8080/img", ("::1",), "::1"),
        ("http://localhost:8080/img", ("localhost",), "localhost"),
        ("https://a.example.com/img", ("*.example.com", "*.exo.io"), "a.example.com"),
    ],
)
def test_allowed(url, hosts, host):
    assert check_download_url(url, hosts) == host


@pytest.mark.parametrize(
    ("url", "hosts", "why"),
    [
        (f"http://sos-ch-gva-2.exo.io/b/img?{SECRET}", EXO, "https is required"),
        (
            f"https://evil.example.com/img?{SECRET}",
            EXO,
            "not in SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS",
        ),
        (f"https://exo.io.evil.com/img?{SECRET}", EXO, "not in SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"),
        ("http://127.0.0.1:8080/img", EXO, "not in SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"),
        (f"https://user:pw@sos.exo.io/img?{SECRET}", EXO, "user info"),
        (f"ftp://sos.exo.io/img?{SECRET}", EXO, "https is required"),
        (f"file:///etc/passwd?{SECRET}", EXO, "no host"),
        (f"https://sos.exo.io:99999/img?{SECRET}", EXO, "malformed"),
        ("not a url", EXO, "no host"),
    ],
)
def test_refused_without_leaking_the_url(url, hosts, why):
    with pytest.raises(DownloadRefused, match=why) as raised:
        check_download_url(url, hosts)
    assert SECRET not in str(raised.value) and "/img" not in str(raised.value)

