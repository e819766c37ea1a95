"""Credentials stay out of errors, logs and broker messages, whatever a server answers.

aiohttp's and botocore's exceptions carry the request URL (a presigned URL is a credential)
and, in their repr, the signed headers. A server answering something aiohttp's strict parser
refuses makes one on demand: these tests do, and look for the secrets everywhere they could
land.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import uuid

import aiohttp
import dramatiq
import pytest
import redis

from tests.fixtures.hostile import MALFORMED, RawServer, fixed
from tests.integration.pipeline_env import (
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    wait_for,
    worker_process,
)
from worker.broker import make_broker
from worker.download import Download, DownloadRetry
from worker.errors import (
    AuthError,
    BadResponse,
    DownloadRefused,
    ShortRead,
    describe,
)
from worker.exoscale import ExoscaleClient
from worker.retry import RetryPolicy
from worker.settings import ExoscaleSettings, TransferSettings
from worker.transfer import ExportSource, archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration

#: A database of its own: test_pipeline flushes 5 (maybe in another checkout's run meanwhile).
REDIS_URL = "redis://127.0.0.1:6379/9"
#: What a presigned URL carries beyond its host: both are credentials.
PATH_SECRET = "SECRETPATH-9f2c"
QUERY_SECRET = "SECRETSIGNATURE-51ab"
API_KEY = "EXOleakkey0123456789abcdef"
API_SECRET = "leak-secret-do-not-print-0123456789"
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)


def presigned(server: RawServer) -> str:
    return f"{server.url}/{PATH_SECRET}/img?X-Amz-Signature={QUERY_SECRET}"


def sent_authorizations(server: RawServer) -> list[str]:
    """Every Authorization header the server received, and its signature on its own."""
    values = [server.header(i, b"Authorization") for i in range(len(server.heads))]
    assert all(values), "every API request was signed"
    headers = [value.decode() for value in values if value]
    return headers + [h.rpartition("signature=")[2] for h in headers]


def assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text


def all_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as logged, exceptions and stack included."""
    return caplog.text + "".join(
        f"{record.getMessage()} {record.exc_text or ''} {record.stack_info or ''}"
        for record in caplog.records
    )


@pytest.fixture(params=sorted(MALFORMED))
def malformed(request):
    with RawServer(fixed(MALFORMED[request.param])) as server:
        yield server


async def test_a_malformed_download_answer_leaks_nothing(
    malformed, archive_store, bucket, caplog
) -> None:
    caplog.set_level(logging.DEBUG)

    async def refresh_url() -> str:
        return presigned(malformed)

    source = ExportSource(
        provider="exoscale",
        zone=ZONE,
        snapshot_id=str(uuid.uuid4()),
        snapshot_name="web",
        instance_id=None,
        created_at=None,
        md5=hashlib.md5(b"hello").hexdigest(),
        url=presigned(malformed),
        refresh_url=refresh_url,
    )
    settings = TransferSettings(part_size=5 * MiB, allowed_download_hosts=("127.0.0.1",))
    with pytest.raises(ShortRead) as raised:
        await archive_export(source, archive_store, settings, retry=DownloadRetry(FAST))
    text = str(raised.value)
    # A faulty server: retried like a 5xx, then given up on, naming the host only.
    assert len(malformed.heads) == FAST.attempts
    assert text.startswith(f"download from 127.0.0.1 failed at byte 0 after {FAST.attempts}")
    assert "malformed response (ClientResponseError)" in text
    assert_clean(text + repr(raised.value) + describe(raised.value), [PATH_SECRET, QUERY_SECRET])
    assert_clean(all_logged(caplog), [PATH_SECRET, QUERY_SECRET])
    bucket.assert_empty()


async def test_a_malformed_api_answer_leaks_nothing(malformed, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = malformed.url + "/{zone}/v2"
    settings = ExoscaleSettings(key=API_KEY, secret=API_SECRET, endpoint=endpoint)
    async with ExoscaleClient(settings, retry=FAST) as client:
        with pytest.raises(BadResponse) as raised:
            await client.get_snapshot(ZONE, "3f0c1d9e-5b7a-4c1e-8f2d-6a9b0c1d2e3f")
    error = raised.value
    assert not error.permanent  # retried like a 5xx
    assert len(malformed.heads) == FAST.attempts
    assert str(error) == (
        f"exoscale: GET /{ZONE}/v2/snapshot/3f0c1d9e-5b7a-4c1e-8f2d-6a9b0c1d2e3f: malformed "
        f"HTTP response from 127.0.0.1:{malformed.port} (ClientResponseError)"
    )
    secrets = [API_KEY, API_SECRET, *sent_authorizations(malformed)]
    assert_clean(str(error) + repr(error), secrets)
    assert_clean(all_logged(caplog), secrets)


async def test_an_api_error_quoting_the_credentials_back_is_redacted(caplog) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(head: bytes, connection: socket.socket, stop: threading.Event) -> None:
        quoted = head.decode(errors="replace").replace("\r\n", " | ")
        body = json.dumps({"message": f"invalid signature in request: {quoted}"}).encode()
        connection.sendall(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    with RawServer(echo) as server:
        settings = ExoscaleSettings(key=API_KEY, secret=API_SECRET, endpoint=server.url + "/v2")
        async with ExoscaleClient(settings, retry=FAST) as client:
            with pytest.raises(AuthError, match="invalid signature in request: GET") as raised:
                await client.list_zones()
    assert "[redacted]" in str(raised.value)
    assert_clean(str(raised.value), [API_KEY, *sent_authorizations(server)])
    assert_clean(all_logged(caplog), [API_KEY, *sent_authorizations(server)])


async def test_a_nul_in_the_host_is_refused_before_any_connection() -> None:
    # urlsplit sees "127.0.0.1\0.exo.io" (it matches *.exo.io); a resolver reading a C string
    # sees 127.0.0.1. The request never starts.
    with RawServer(fixed(MALFORMED["bad-status-line"])) as server:

        async def refresh_url() -> str:
            raise AssertionError("no request, no refresh")

        url = f"https://127.0.0.1\0.exo.io:{server.port}/img?X-Amz-Signature={QUERY_SECRET}"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(DownloadRefused, match="malformed") as raised:
                download = Download(
                    session, url, refresh_url, ("*.exo.io",), retry=DownloadRetry(FAST)
                )
                await download.open()
        assert QUERY_SECRET not in str(raised.value)
        assert server.connections == 0


# -- Dramatiq's retried messages ------------------------------------------------------------


def _delayed_messages(client: redis.Redis, queue: str) -> list[bytes]:
    return list(client.hgetall(f"dramatiq:{queue}.DQ.msgs").values())


async def test_a_retried_message_keeps_no_exception_text() -> None:
    # Dramatiq's Retries middleware stores traceback.format_exc() in the retried message: with
    # the chained aiohttp exception, the URL's secrets would sit in Redis.
    queue = f"leak-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL)
    previous = dramatiq.broker.global_broker
    with RawServer(fixed(MALFORMED["content-length-and-chunked"])) as server:
        url = presigned(server)
        broker = make_broker(REDIS_URL)

        def fetch_chained() -> None:
            async def get() -> None:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    await response.read()

            try:
                asyncio.run(get())
            except aiohttp.ClientError:
                raise ShortRead("download from 127.0.0.1 failed")  # noqa: B904 -- on purpose

        def fetch_bare() -> None:
            async def get() -> None:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    await response.read()

            asyncio.run(get())

        options = {"broker": broker, "queue_name": queue, "max_retries": 3}
        actors = [
            dramatiq.actor(fn, actor_name=f"{queue}-{fn.__name__}", min_backoff=60_000, **options)
            for fn in (fetch_chained, fetch_bare)
        ]
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            for actor in actors:
                actor.send()
            for _ in range(300):
                if len(_delayed_messages(client, queue)) == len(actors):
                    break
                await asyncio.sleep(0.1)
            stored = _delayed_messages(client, queue)
        finally:
            worker.stop()
            broker.close()
            dramatiq.set_broker(previous) if previous is not None else None
            with contextlib.suppress(redis.RedisError):
                client.delete(*client.scan_iter(f"dramatiq:{queue}*"))
            client.close()
    assert len(stored) == len(actors) and len(server.heads) == len(actors)
    tracebacks = {}
    for raw in stored:
        assert PATH_SECRET.encode() not in raw and QUERY_SECRET.encode() not in raw
        message = json.loads(raw)
        tracebacks[message["actor_name"]] = message["options"]["traceback"]
    chained = tracebacks[f"{queue}-fetch_chained"]
    bare = tracebacks[f"{queue}-fetch_bare"]
    # Still a traceback: the frames and the error, ours with its words, a foreign one by name.
    assert "in fetch_chained" in chained and chained.endswith(
        "ShortRead: download from 127.0.0.1 failed\n"
    )
    assert "in fetch_bare" in bare and bare.endswith("\nClientResponseError\n")
    assert "During handling" not in chained


# -- the whole pipeline ---------------------------------------------------------------------


def test_a_worker_facing_a_malformed_api_keeps_secrets_out_of_redis_and_logs(
    simulator, moto_endpoint, s3_bucket, tmp_path
) -> None:
    snapshot_id = str(uuid.uuid4())
    with RawServer(fixed(MALFORMED["bad-content-length"])) as server:
        env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
        env.update(
            EXOSCALE_API_ENDPOINT=server.url + "/{zone}/v2",
            EXOSCALE_API_KEY=API_KEY,
            EXOSCALE_API_SECRET=API_SECRET,
        )
        queue = env["SNAPARCHIVE_QUEUE"]
        client = redis.Redis.from_url(REDIS_URL)
        log = tmp_path / "worker.log"
        try:
            queued = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
            assert queued.returncode == 0, queued.stderr
            with worker_process(env, log=log):
                # The step's API calls fail (after JsonApi's own retries): Dramatiq retries it.
                stored = wait_for(lambda: _delayed_messages(client, queue), timeout=90)
            everything = b"".join(client.dump(key) or b"" for key in client.scan_iter(f"*{queue}*"))
        finally:
            forget_queue(env)
            client.close()
    secrets = [API_KEY, API_SECRET, *sent_authorizations(server)]
    logged = log.read_text()
    assert "start_export" in logged and "malformed HTTP response from 127.0.0.1" in logged
    assert_clean(logged, secrets)
    for raw in [*stored, everything]:
        assert_clean(raw.decode(errors="replace"), secrets)
    traceback = json.loads(stored[0])["options"]["traceback"]
    assert traceback.endswith(
        f"StepRetry: start_export {ZONE}/{snapshot_id}: exoscale: GET /{ZONE}/v2/snapshot/"
        f"{snapshot_id}: malformed HTTP response from 127.0.0.1:{server.port} "
        "(ClientResponseError)\n"
    )
