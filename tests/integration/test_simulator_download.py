"""Presigned downloads from the simulator over real HTTP: bytes, ranges, expiry and faults."""

from __future__ import annotations

import hashlib
import http.client
import logging
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.fixtures.qcow2 import assert_clean, image_info
from tests.fixtures.simulator import ManualClock, signed_request
from worker.simulator import Faults, Simulator
from worker.units import MiB

pytestmark = pytest.mark.integration

SNAPSHOT = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
SIZE = 3 * MiB + 12345  # not a whole number of blocks


class Fetched:
    """A response read as far as the connection allowed."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, error: Exception | None):
        self.status, self.headers, self.body, self.error = status, headers, body, error


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Fetched:
    """GET ``url`` with http.client, keeping what arrived before a cut connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, f"{parts.path}?{parts.query}", headers=headers or {})
        response = connection.getresponse()
        body, error = bytearray(), None
        try:
            while chunk := response.read(64 * 1024):
                body += chunk
        except http.client.IncompleteRead as exc:
            body += exc.partial
            error = exc
        except ConnectionResetError as exc:
            error = exc
        headers = dict(response.getheaders())
        promised = int(headers.get("Content-Length", 0))
        if error is None and method != "HEAD" and len(body) < promised:
            # read(amt) returns b"" at an early end of stream instead of raising.
            error = http.client.IncompleteRead(bytes(body), promised - len(body))
        return Fetched(response.status, headers, bytes(body), error)
    finally:
        connection.close()


def exported(sim: Simulator, snapshot_id: str = SNAPSHOT, size: int = SIZE) -> dict[str, str]:
    """Add an exported snapshot and return its ``export`` member."""
    sim.add_snapshot(snapshot_id, size, state="exported")
    return signed_request(sim, "GET", f"/snapshot/{snapshot_id}").json()["export"]


def image_bytes(sim: Simulator, snapshot_id: str = SNAPSHOT) -> bytes:
    with sim.open_image(snapshot_id) as image:
        return image.read()


def test_full_download_matches_the_published_md5(simulator):
    export = exported(simulator)
    response = fetch(export["presigned-url"])
    assert response.status == 200
    assert response.error is None
    assert int(response.headers["Content-Length"]) == SIZE
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{export["md5sum"]}"'
    assert hashlib.md5(response.body).hexdigest() == export["md5sum"]
    assert export["md5sum"] == simulator.image_md5(SNAPSHOT)
    assert response.body == image_bytes(simulator)
    assert simulator.bytes_served(SNAPSHOT) == SIZE


def test_raw_disk_is_sparse_like_a_real_one(simulator):
    export = exported(simulator, size=16 * MiB)
    body = fetch(export["presigned-url"]).body
    blocks = [body[i : i + MiB] for i in range(0, len(body), MiB)]
    zero_blocks = sum(1 for block in blocks if block.count(0) == MiB)
    assert 0 < zero_blocks < len(blocks)


def test_qcow2_export_is_a_valid_image_of_the_snapshot_size_resumable_with_range(
    simulator, tmp_path
):
    simulator.add_snapshot(SNAPSHOT, 6 * MiB, state="exported", image_format="qcow2")
    body = signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").json()
    export = body["export"]
    url = export["presigned-url"]
    # Downloaded in two ranged halves, as a resumed download reads it.
    head = fetch(url)
    size = int(head.headers["Content-Length"])
    first = fetch(url, {"Range": f"bytes=0-{size // 2 - 1}"})
    second = fetch(url, {"Range": f"bytes={size // 2}-"})
    assert (first.status, second.status) == (206, 206)
    data = first.body + second.body
    assert data == head.body
    assert hashlib.md5(data).hexdigest() == export["md5sum"]
    image = tmp_path / "export.qcow2"
    image.write_bytes(data)
    assert_clean(image)
    info = image_info(image)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == body["size"] * 1024**3


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=1048570-1048589", 1048570, 1048590),  # across a block boundary
        (f"bytes={SIZE - 10}-", SIZE - 10, SIZE),
        ("bytes=-100", SIZE - 100, SIZE),
        (f"bytes=5-{SIZE * 2}", 5, SIZE),
    ],
)
def test_range_requests(simulator, header, start, end):
    export = exported(simulator)
    response = fetch(export["presigned-url"], {"Range": header})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert int(response.headers["Content-Length"]) == end - start
    assert response.body == image_bytes(simulator)[start:end]


def test_unsatisfiable_range_is_416(simulator):
    export = exported(simulator)
    response = fetch(export["presigned-url"], {"Range": f"bytes={SIZE}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    assert b"<Code>InvalidRange</Code>" in response.body


def test_head_reports_the_size_without_a_body(simulator):
    export = exported(simulator)
    response = fetch(export["presigned-url"], method="HEAD")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == SIZE
    assert response.body == b""
    assert simulator.bytes_served(SNAPSHOT) == 0


def test_conditional_headers_use_the_etag(simulator):
    export = exported(simulator)
    url = export["presigned-url"]
    assert fetch(url, {"If-Match": '"0000"'}).status == 412
    assert fetch(url, {"If-Match": f'"{export["md5sum"]}"', "Range": "bytes=0-9"}).status == 206
    stale = fetch(url, {"If-Range": '"0000"', "Range": "bytes=0-9"})
    assert stale.status == 200
    assert len(stale.body) == SIZE


def test_url_expires(simulator_with_clock):
    sim, clock = simulator_with_clock
    export = exported(sim)
    assert fetch(export["presigned-url"], {"Range": "bytes=0-0"}).status == 206
    clock.advance(3601)
    expired = fetch(export["presigned-url"])
    assert expired.status == 403
    assert b"<Code>AccessDenied</Code>" in expired.body
    assert b"Request has expired" in expired.body
    # Signed for the simulator's clock, which is now an hour ahead.
    response = signed_request(sim, "GET", f"/snapshot/{SNAPSHOT}", expires=int(clock() + 600))
    fresh = response.json()["export"]
    assert fetch(fresh["presigned-url"], {"Range": "bytes=0-0"}).status == 206


def test_url_ttl_fault_shortens_the_lifetime(simulator_with_clock):
    sim, clock = simulator_with_clock
    sim.add_snapshot(SNAPSHOT, SIZE, state="exported")
    sim.set_faults(Faults(url_ttl=10), snapshot_id=SNAPSHOT)
    url = signed_request(sim, "GET", f"/snapshot/{SNAPSHOT}").json()["export"]["presigned-url"]
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "10"
    clock.advance(11)
    assert fetch(url).status == 403


@pytest.fixture
def simulator_with_clock():
    clock = ManualClock()
    sim = Simulator(key="EXOclock", secret="clock-secret", export_seconds=0, clock=clock)
    with sim.running():
        yield sim, clock


@pytest.mark.parametrize("param", ["X-Amz-Signature", "X-Amz-Expires", "X-Amz-Date"])
def test_tampered_urls_are_refused(simulator, param):
    url = exported(simulator)["presigned-url"]
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    params[param] = "20991231T000000Z" if param == "X-Amz-Date" else "9" * len(params[param])
    tampered = parts._replace(query=urlencode(params)).geturl()
    response = fetch(tampered)
    assert response.status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in response.body


def test_url_without_signature_is_refused(simulator):
    url = exported(simulator)["presigned-url"]
    response = fetch(url.split("?")[0] + "?")
    assert response.status == 403
    assert b"<Code>AccessDenied</Code>" in response.body


def test_deleted_snapshot_url_is_404(simulator):
    url = exported(simulator)["presigned-url"]
    signed_request(simulator, "DELETE", f"/snapshot/{SNAPSHOT}")
    response = fetch(url)
    assert response.status == 404
    assert b"<Code>NoSuchKey</Code>" in response.body


def test_truncated_download_can_be_resumed(simulator):
    export = exported(simulator)
    cut = MiB + 100
    simulator.set_faults(Faults(truncate_at=cut), snapshot_id=SNAPSHOT)
    first = fetch(export["presigned-url"])
    assert first.status == 200
    assert int(first.headers["Content-Length"]) == SIZE
    assert isinstance(first.error, http.client.IncompleteRead)
    assert first.body == image_bytes(simulator)[:cut]

    rest = fetch(export["presigned-url"], {"Range": f"bytes={len(first.body)}-"})
    assert rest.status == 206
    assert rest.error is None
    assert hashlib.md5(first.body + rest.body).hexdigest() == export["md5sum"]


def test_reset_download_can_be_resumed(simulator):
    export = exported(simulator)
    simulator.set_faults(Faults(reset_at=2 * MiB), snapshot_id=SNAPSHOT)
    first = fetch(export["presigned-url"])
    assert first.error is not None
    assert len(first.body) <= 2 * MiB
    assert first.body == image_bytes(simulator)[: len(first.body)]

    rest = fetch(export["presigned-url"], {"Range": f"bytes={len(first.body)}-"})
    assert rest.error is None
    assert hashlib.md5(first.body + rest.body).hexdigest() == export["md5sum"]


def test_download_faults_fire_the_given_number_of_times(simulator):
    export = exported(simulator)
    simulator.set_faults(Faults(truncate_at=10, download_fault_times=2), snapshot_id=SNAPSHOT)
    # A range that does not cover the offset neither fires nor spends the fault.
    assert fetch(export["presigned-url"], {"Range": "bytes=20-29"}).error is None
    errors = [fetch(export["presigned-url"]).error is not None for _ in range(3)]
    assert errors == [True, True, False]


def test_download_faults_can_fire_every_time(simulator):
    export = exported(simulator)
    simulator.set_faults(Faults(truncate_at=10, download_fault_times=None), snapshot_id=SNAPSHOT)
    assert all(fetch(export["presigned-url"]).error is not None for _ in range(3))


def test_corrupted_byte(simulator):
    export = exported(simulator)
    offset = 2 * MiB + 7
    simulator.set_faults(Faults(corrupt_at=offset), snapshot_id=SNAPSHOT)
    corrupted = fetch(export["presigned-url"])
    expected = image_bytes(simulator)
    assert corrupted.error is None
    assert len(corrupted.body) == SIZE
    assert [i for i in range(SIZE) if corrupted.body[i] != expected[i]] == [offset]
    assert hashlib.md5(corrupted.body).hexdigest() != export["md5sum"]
    assert fetch(export["presigned-url"]).body == expected


def test_slow_download_trickles(simulator):
    export = exported(simulator, size=4 * MiB)
    simulator.set_faults(Faults(slow_rate=256 * 1024), snapshot_id=SNAPSHOT)
    parts = urlsplit(export["presigned-url"])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        assert response.read(1024) == image_bytes(simulator)[:1024]
        # Unpaced, the whole 4 MiB would be in the socket buffers by now; paced at
        # 256 KiB/s, reaching half of it takes 8 seconds.
        assert simulator.bytes_served(SNAPSHOT) < 2 * MiB
    finally:
        connection.close()


def test_downloads_sending_counts_a_body_until_the_client_is_gone(simulator):
    export = exported(simulator, size=4 * MiB)
    simulator.set_faults(Faults(slow_rate=256 * 1024), snapshot_id=SNAPSHOT)
    assert simulator.downloads_sending(SNAPSHOT) == 0
    parts = urlsplit(export["presigned-url"])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", f"{parts.path}?{parts.query}")
    response = connection.getresponse()
    response.read(1024)
    assert simulator.downloads_sending(SNAPSHOT) == 1
    connection.close()
    _until_not_sending(simulator)
    served = simulator.bytes_served(SNAPSHOT)
    time.sleep(0.3)  # three paced writes' worth: nothing more is counted
    assert simulator.bytes_served(SNAPSHOT) == served < 4 * MiB
    assert fetch(export["presigned-url"], {"Range": "bytes=0-9"}).status == 206
    _until_not_sending(simulator)
    assert simulator.bytes_served(SNAPSHOT) == served + 10


def _until_not_sending(sim: Simulator, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sim.downloads_sending(SNAPSHOT):
        assert time.monotonic() < deadline, "a download is still sending"
        time.sleep(0.02)


def test_logs_carry_neither_secret_nor_url_signature(simulator, caplog):
    caplog.set_level(logging.DEBUG)
    simulator.add_snapshot(SNAPSHOT, SIZE)
    operation = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    signed_request(simulator, "GET", f"/operation/{operation['id']}")
    export = signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").json()["export"]
    assert fetch(export["presigned-url"]).status == 200
    signed_request(simulator, "GET", "/snapshot", secret="wrong-secret")
    signature = dict(parse_qsl(urlsplit(export["presigned-url"]).query))["X-Amz-Signature"]
    assert "/sos/ch-gva-2/exports/" in caplog.text  # the download was logged...
    assert signature not in caplog.text  # ...without its signature
    assert simulator.secret not in caplog.text
    assert "wrong-secret" not in caplog.text
    assert "signature=" not in caplog.text


def test_contents_are_determined_by_the_seed():
    def served_md5(seed: int) -> str:
        sim = Simulator(key="EXOseed", secret="seed-secret", seed=seed, export_seconds=0)
        with sim.running():
            return hashlib.md5(fetch(exported(sim)["presigned-url"]).body).hexdigest()

    assert served_md5(3) == served_md5(3) != served_md5(4)
