"""Which export URLs the download accepts, and how it backs off."""

import pytest

from worker.download import DownloadRetry, check_download_url
from worker.errors import DownloadRefused

EXO = ("*.exo.io",)
SECRET = "X-Amz-Signature=abcdef0123456789"


@pytest.mark.parametrize(
    ("url", "hosts", "host"),
    [
        (f"https://sos-ch-gva-2.exo.io/bucket/img?{SECRET}", EXO, "sos-ch-gva-2.exo.io"),
        (f"https://SOS-CH-GVA-2.EXO.IO/b/img?{SECRET}", EXO, "sos-ch-gva-2.exo.io"),
        (
            f"https://sos-ch-gva-2.exo.io:443/b/my%20img?X-Amz-Credential=EXO1%2Fch-gva-2&{SECRET}",
            EXO,
            "sos-ch-gva-2.exo.io",
        ),
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
        ("not-a-url", EXO, "no host"),
    ],
)
def test_refused_without_leaking_the_url(url, hosts, why):
    with pytest.raises(DownloadRefused, match=why) as raised:
        check_download_url(url, hosts)
    assert SECRET not in str(raised.value) and "/img" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        # urlsplit and the resolver disagree: NUL ends the C string, 127.0.0.1 is dialled.
        f"https://127.0.0.1\0.exo.io:8095/img?{SECRET}",
        f"https://127.0.0.1%00.exo.io/img?{SECRET}",
        f"https://127.0.0.1 .exo.io/img?{SECRET}",
        f"https://127.0.0.1\t.exo.io/img?{SECRET}",
        f"https://sos.exo.io\n.evil.com/img?{SECRET}",
        f"https://evil.com\r.exo.io/img?{SECRET}",
        f"https://evil.com\x7f.exo.io/img?{SECRET}",
        f"https://evil.com;.exo.io/img?{SECRET}",
        f"https://evil.com\\.exo.io/img?{SECRET}",
        f"https://sos.exo.io\\@evil.com/img?{SECRET}",
        f"https://evil..exo.io/img?{SECRET}",
        f"https://.exo.io/img?{SECRET}",
        f"https://sos.exo.io./img?{SECRET}",
        f"https://sös.exo.io/img?{SECRET}",
        f"https://sos.exo.io:+443/img?{SECRET}",
        f"https://sos.exo.io:\u0664\u0664\u0663/img?{SECRET}",
        f"https://[fe80::1%25eth0]/img?{SECRET}",
        f"https://[::1/img?{SECRET}",
    ],
)
def test_hosts_the_client_would_read_otherwise_are_refused(url):
    with pytest.raises(DownloadRefused, match="malformed") as raised:
        check_download_url(url, ("*.exo.io", "*"))
    assert SECRET not in str(raised.value)


def test_the_default_retry_gives_up_within_its_documented_bounds():
    retry = DownloadRetry()
    policy = retry.backoff
    # Waits after each failed attempt but the last, at their ceiling (jitter only shortens).
    waits = sum(min(policy.cap, policy.base * 2 ** (n - 1)) for n in range(1, policy.attempts))
    # Unreachable, or never answering: every attempt spends at most connect_timeout.
    assert policy.attempts * retry.connect_timeout + waits <= 3 * 60
    # Trickling: every attempt spends at most one window.
    assert policy.attempts * retry.window + waits <= 9 * 60
    assert retry.min_bytes == 64 * 1024 and retry.window == 60


SIM = ("*.exo.io", "http://simulator:8080")


@pytest.mark.parametrize(
    ("url", "hosts", "host"),
    [
        ("http://simulator:8080/ch-gva-2/img?sig=1", SIM, "simulator"),
        ("http://SIMULATOR:8080/img", ("http://Simulator:8080",), "simulator"),
        ("http://simulator/img", ("http://simulator",), "simulator"),  # port 80
        ("http://simulator:80/img", ("http://simulator",), "simulator"),
        ("http://10.0.0.7:8080/img", ("http://10.0.0.7:8080/",), "10.0.0.7"),
        ("http://[fd00::7]:8080/img", ("http://[fd00::7]:8080",), "fd00::7"),
        ("https://sos.internal:8443/img", ("https://sos.internal:8443",), "sos.internal"),
        (f"https://sos-ch-gva-2.exo.io/b/img?{SECRET}", SIM, "sos-ch-gva-2.exo.io"),
    ],
)
def test_a_scheme_qualified_entry_allows_its_scheme_host_and_port(url, hosts, host):
    assert check_download_url(url, hosts) == host


@pytest.mark.parametrize(
    ("url", "hosts", "why"),
    [
        # Everything but the exact scheme, host and port of the entry stays refused.
        (f"http://simulator:8081/img?{SECRET}", SIM, "https is required"),
        (f"http://simulator/img?{SECRET}", SIM, "https is required"),
        (f"http://simulator.evil.com:8080/img?{SECRET}", SIM, "https is required"),
        (f"http://evil-simulator:8080/img?{SECRET}", SIM, "https is required"),
        (f"https://simulator:8080/img?{SECRET}", SIM, "not in SNAPARCHIVE_ALLOWED"),
        (f"http://sos-ch-gva-2.exo.io:8080/img?{SECRET}", SIM, "https is required"),
        (f"http://user:pw@simulator:8080/img?{SECRET}", SIM, "user info"),
        (f"ftp://simulator:8080/img?{SECRET}", SIM, "https is required"),
        # No wildcards in a scheme-qualified entry: it is not a pattern.
        (f"http://a.sim:8080/img?{SECRET}", ("http://*.sim:8080",), "https is required"),
        (f"https://a.sim/img?{SECRET}", ("https://*.sim",), "not in SNAPARCHIVE_ALLOWED"),
        # An http entry allows that host on http: not every host on https.
        (f"https://other.com/img?{SECRET}", ("http://simulator:8080",), "not in SNAPARCHIVE"),
    ],
)
def test_a_scheme_qualified_entry_allows_nothing_else(url, hosts, why):
    with pytest.raises(DownloadRefused, match=why) as raised:
        check_download_url(url, hosts)
    assert SECRET not in str(raised.value) and "/img" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        # The parsers must agree on the host and port before any entry is looked at.
        f"http://simulator:8080\\@evil.com/img?{SECRET}",
        f"http://simulator\0:8080/img?{SECRET}",
        f"http://simulator:+8080/img?{SECRET}",
        f"http://simulator:8080;.evil.com/img?{SECRET}",
    ],
)
def test_hostile_urls_are_refused_with_a_scheme_qualified_entry(url):
    with pytest.raises(DownloadRefused, match="malformed") as raised:
        check_download_url(url, SIM)
    assert SECRET not in str(raised.value)
