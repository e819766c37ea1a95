"""The Genesis Cloud adapter against the fake Genesis Cloud API over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fakes.server import Fault
from worker import errors
from worker.errors import ConfigError
from worker.providers.genesiscloud import GenesisCloud, GenesisCloudSettings
from worker.retry import RetryPolicy
from worker.units import GiB

FAST = RetryPolicy(attempts=3, base=0.001, cap=0.01)


def adapter(fake: FakeGenesisCloud, *, token: str | None = None, per_page: int = 100):
    settings = GenesisCloudSettings(token=token or fake.token, endpoint=fake.url)
    return GenesisCloud(settings, retry=FAST, per_page=per_page)


async def test_reads_every_page_and_maps_records(genesis_api: FakeGenesisCloud) -> None:
    for _ in range(7):
        genesis_api.add()
    genesis_api.add(status="creating", size=None, resource_id="")
    async with adapter(genesis_api, per_page=3) as api:
        records = await api.list_snapshots()
    pages = [(r.query["page"], r.query["per_page"]) for r in genesis_api.requests]
    assert pages == [("1", "3"), ("2", "3"), ("3", "3")]
    assert {r.headers["Authorization"] for r in genesis_api.requests} == {"Bearer genesis-token"}
    assert [r.id for r in records] == [s["id"] for s in genesis_api.snapshots]
    first, last = records[0], records[-1]
    assert (first.provider, first.region, first.status, first.raw_status) == (
        "genesiscloud",
        "NORD-NO-KRS-1",
        "ready",
        "created",
    )
    assert first.size_bytes == 128 * GiB
    assert first.source_id == "instance-1"
    assert first.created_at == datetime(2024, 1, 2, 10, 47, 46, 786000, tzinfo=UTC)
    assert first.raw == genesis_api.snapshots[0]
    assert (last.status, last.size_bytes, last.source_id) == ("creating", None, None)


async def test_pages_smaller_than_asked_are_read_to_the_end(
    genesis_api: FakeGenesisCloud,
) -> None:
    for _ in range(5):
        genesis_api.add()
    genesis_api.page_cap = 2
    async with adapter(genesis_api, per_page=4) as api:
        assert len(await api.list_snapshots()) == 5
    assert [r.query["page"] for r in genesis_api.requests] == ["1", "2", "3"]


async def test_empty_account_is_one_call(genesis_api: FakeGenesisCloud) -> None:
    async with adapter(genesis_api) as api:
        assert await api.list_snapshots() == []
    assert len(genesis_api.requests) == 1


async def test_region_is_filtered_here(genesis_api: FakeGenesisCloud) -> None:
    genesis_api.add(region="NORD-NO-KRS-1")
    wanted = genesis_api.add(region="ARC-IS-HAF-1")
    async with adapter(genesis_api) as api:
        records = await api.list_snapshots("ARC-IS-HAF-1")
    assert [r.id for r in records] == [wanted["id"]]


async def test_get_and_delete_by_id(genesis_api: FakeGenesisCloud) -> None:
    kept, gone = genesis_api.add(), genesis_api.add(status="pending_delete")
    async with adapter(genesis_api) as api:
        assert (await api.get_snapshot(gone["id"])).status == "deleting"
        await api.delete_snapshot(gone["id"])
        with pytest.raises(errors.NotFound, match=r"^genesiscloud: .*Snapshot not found"):
            await api.get_snapshot(gone["id"])
    assert genesis_api.snapshots == [kept]


async def test_bad_token_is_an_auth_error(genesis_api: FakeGenesisCloud) -> None:
    async with adapter(genesis_api, token="wrong") as api:
        with pytest.raises(errors.AuthError) as caught:
            await api.list_snapshots()
    assert caught.value.message == (
        "genesiscloud: GET /compute/v1/snapshots: HTTP 401: Invalid or missing API token"
    )
    assert "wrong" not in str(caught.value)
    assert len(genesis_api.requests) == 1  # 4xx is never retried


async def test_validation_error_is_not_retried(genesis_api: FakeGenesisCloud) -> None:
    genesis_api.fail_next(Fault(422, {"code": "validation", "message": "per_page is invalid"}))
    async with adapter(genesis_api) as api:
        with pytest.raises(errors.BadRequest, match="HTTP 422: per_page is invalid"):
            await api.list_snapshots()
    assert len(genesis_api.requests) == 1


async def test_rate_limit_and_server_errors_are_retried(genesis_api: FakeGenesisCloud) -> None:
    genesis_api.add()
    genesis_api.fail_next(
        Fault(429, {"message": "slow down"}, headers={"Retry-After": "0"}),
        Fault(502, text="<html><body>Bad Gateway</body></html>"),
    )
    async with adapter(genesis_api) as api:
        records = await api.list_snapshots()
    assert len(records) == 1
    assert len(genesis_api.requests) == 3


async def test_persistent_server_error_names_the_provider(genesis_api: FakeGenesisCloud) -> None:
    genesis_api.fail_next(*[Fault(503, text="<html>down</html>")] * 3)
    async with adapter(genesis_api) as api:
        with pytest.raises(errors.ServerError, match=r"^genesiscloud: .*HTTP 503: an HTML page"):
            await api.list_snapshots()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"snapshots": []}, "list-snapshots page 1 has no 'total_count'"),
        ({"snapshots": {}, "total_count": 1}, "list-snapshots page 1's 'snapshots' is an object"),
        ([], "list-snapshots page 1 is a list, not an object"),
        ({"snapshots": [{"id": "a", "region": "R"}], "total_count": 1}, "has no 'status'"),
        (
            {"snapshots": [{"id": 7, "status": "created", "region": "R"}], "total_count": 1},
            "snapshot 1 of page 1 has 'id' of type an integer",
        ),
        (
            {
                "snapshots": [{"id": "a", "status": "created", "region": "R", "size": "big"}],
                "total_count": 1,
            },
            "'size' of type a string",
        ),
        (
            {
                "snapshots": [
                    {"id": "a", "status": "created", "region": "R", "created_at": "yesterday"}
                ],
                "total_count": 1,
            },
            "'created_at' 'yesterday', not an ISO 8601 date-time",
        ),
    ],
)
async def test_malformed_bodies_are_clear_errors(
    genesis_api: FakeGenesisCloud, body: object, message: str
) -> None:
    genesis_api.fail_next(Fault(200, body))
    async with adapter(genesis_api) as api:
        with pytest.raises(errors.BadResponse, match=f"^genesiscloud: .*{message}"):
            await api.list_snapshots()


async def test_html_instead_of_json_is_a_clear_error(genesis_api: FakeGenesisCloud) -> None:
    genesis_api.fail_next(Fault(200, text="<!doctype html><p>maintenance</p>"))
    async with adapter(genesis_api) as api:
        with pytest.raises(errors.BadResponse, match=r"^genesiscloud: .*an HTML page"):
            await api.list_snapshots()


def test_settings_from_env_and_required_token() -> None:
    env = {"GENESISCLOUD_TOKEN": "s3cr3t", "GENESISCLOUD_API_ENDPOINT": "http://127.0.0.1:9/"}
    assert GenesisCloudSettings.from_env(env).endpoint == "http://127.0.0.1:9"
    assert GenesisCloudSettings.from_env({}).endpoint == "https://api.genesiscloud.com"
    assert "s3cr3t" not in repr(GenesisCloudSettings.from_env(env))
    with pytest.raises(ConfigError, match="GENESISCLOUD_TOKEN is not set"):
        GenesisCloud.from_env({})
    with pytest.raises(ValueError, match="per_page must be 1 to 100"):
        GenesisCloud(GenesisCloudSettings(token="t"), per_page=101)
