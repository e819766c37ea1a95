"""A store that damages or refuses parts: a fault-injecting proxy in front of moto."""

import pytest

from worker.archive import ArchiveStore
from worker.errors import StoreIntegrityError
from worker.settings import S3Settings
from worker.transfer import archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration

SIZE = 18 * MiB + 5  # four parts of 5 MiB, the last one short


@pytest.fixture
async def proxied_store(s3_proxy, s3_bucket):
    async with ArchiveStore(S3Settings(endpoint=s3_proxy.url, bucket=s3_bucket)) as store:
        yield store


async def test_a_part_received_wrongly_once_is_sent_again(
    exported, proxied_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    s3_proxy.corrupt[2] = 1
    result = await archive_export(source, proxied_store, small_transfer)
    assert sorted(s3_proxy.uploads) == [1, 2, 2, 3, 4]
    assert bucket.md5([result.objects[0].key]) == source.md5


async def test_a_store_that_keeps_corrupting_a_part_is_refused(
    exported, proxied_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    s3_proxy.corrupt[3] = 99
    with pytest.raises(StoreIntegrityError, match=r"part 3 of .*image wrong"):
        await archive_export(source, proxied_store, small_transfer)
    bucket.assert_empty()


async def test_slow_down_and_resets_on_part_uploads_are_retried(
    exported, proxied_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    s3_proxy.slow_down[1] = 1
    s3_proxy.reset[4] = 1
    result = await archive_export(source, proxied_store, small_transfer)
    assert sorted(s3_proxy.uploads) == [1, 2, 3, 4]
    assert bucket.md5([result.objects[0].key]) == source.md5
    assert bucket.open_uploads() == []
