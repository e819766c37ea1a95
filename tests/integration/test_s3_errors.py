"""The archive store's failures: how many attempts, and what their messages show.

botocore's text names the request URL (bucket, key, upload id) and a store's error message
is whatever it chose to write: messages name the store's host, the status and the code.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.fixtures.hostile import closed_port
from worker.archive import ArchiveStore
from worker.errors import StoreError
from worker.s3client import S3_MAX_ATTEMPTS
from worker.settings import S3Settings

pytestmark = pytest.mark.integration

SECRET_KEY = "snaparchive/exoscale/ch-gva-2/SECRETKEY-41d7/manifest.json"
ERROR_BODY = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
    b"<Message>We failed at http://127.0.0.1/SECRET-IN-MESSAGE</Message></Error>"
)


class Failing:
    """An S3 endpoint that answers every request 500 InternalError; counts them."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(500)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(ERROR_BODY)))
                self.end_headers()
                self.wfile.write(ERROR_BODY)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing(moto_endpoint: str) -> Iterator[Failing]:  # moto_endpoint: dummy credentials
    server = Failing()
    yield server
    server.close()


async def test_a_failing_store_gets_s3_max_attempts_in_all(failing: Failing) -> None:
    settings = S3Settings(endpoint=f"http://{failing.host}", bucket="bucket")
    async with ArchiveStore(settings, max_workers=1) as store:
        with pytest.raises(StoreError) as raised:
            await store.read_manifest(SECRET_KEY)
    assert len(failing.requests) == S3_MAX_ATTEMPTS
    assert str(raised.value) == f"S3 GetObject failed: HTTP 500 InternalError ({failing.host})"


async def test_an_unreachable_store_is_named_by_its_host_only(moto_endpoint: str) -> None:
    host = f"127.0.0.1:{closed_port()}"
    async with ArchiveStore(S3Settings(endpoint=f"http://{host}", bucket="b")) as store:
        with pytest.raises(StoreError) as raised:
            await store.read_manifest(SECRET_KEY)
    assert str(raised.value) == f"S3 GetObject failed: EndpointConnectionError ({host})"
