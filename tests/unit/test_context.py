"""The step context sizes the archive store's threads for the transfers it runs."""

import pytest

from jobs.context import Context
from worker.jobstore import MemoryJobStore
from worker.settings import ExoscaleSettings, S3Settings, Settings, TransferSettings


@pytest.mark.parametrize(("transfers", "concurrency"), [(1, 4), (3, 4), (8, 2)])
async def test_store_threads_follow_transfers_and_upload_concurrency(transfers, concurrency):
    settings = Settings(
        exoscale=ExoscaleSettings(key="EXOkey", secret="secret"),
        s3=S3Settings(endpoint="http://127.0.0.1:9", bucket="bucket"),
        transfer=TransferSettings(upload_concurrency=concurrency),
    )
    ctx = Context.create(settings, MemoryJobStore(), transfers=transfers)
    try:
        assert ctx.archive.max_workers == (concurrency + 1) * transfers
    finally:
        await ctx.close()
