"""The Gcore adapter against the fake Gcore API over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fakes.gcore import FakeGcore
from tests.fakes.server import Fault
from worker import errors
from worker.errors import ConfigError
from worker.providers.base import NotARegion
from worker.providers.gcore import Gcore, GcoreSettings
from worker.retry import RetryPolicy
from worker.units import GiB

FAST = RetryPolicy(attempts=3, base=0.001, cap=0.01)


def adapter(fake: FakeGcore, *, key: str | None = None, region_id: int | None = 7, limit=1000):
    settings = GcoreSettings(
        api_key=key or fake.api_key,
        project_id=fake.project_id,
        region_id=region_id,
        endpoint=fake.url,
    )
    return Gcore(settings, retry=FAST, limit=limit)


async def test_reads_until_count_and_maps_records(gcore_api: FakeGcore) -> None:
    for _ in range(5):
        gcore_api.add(7)
    gcore_api.add(7, status="creating", size=None)
    gcore_api.add(8)  # another region: not listed
    async with adapter(gcore_api, limit=2) as api:
        records = await api.list_snapshots()
    seen = [(r.path, r.query["limit"], r.query["offset"]) for r in gcore_api.requests]
    path = "/cloud/v1/snapshots/1337/7"
    assert seen == [(path, "2", "0"), (path, "2", "2"), (path, "2", "4")]
    assert {r.headers["Authorization"] for r in gcore_api.requests} == {"apikey gcore-key"}
    assert [r.id for r in records] == [s["id"] for s, _ in gcore_api.snapshots[7]]
    first, last = records[0], records[-1]
    assert (first.provider, first.region, first.status, first.raw_status) == (
        "gcore",
        "7",
        "ready",
        "available",
    )
    assert first.size_bytes == 20 * GiB
    assert first.source_id == "volume-1"
    assert first.created_at == datetime(2019, 5, 29, 5, 32, 41, tzinfo=UTC)
    assert (last.status, last.size_bytes) == ("creating", None)


async def test_region_argument_wins_over_the_default(gcore_api: FakeGcore) -> None:
    wanted = gcore_api.add(8)
    gcore_api.add(7)
    async with adapter(gcore_api) as api:
        records = await api.list_snapshots("8")
    assert [(r.id, r.region) for r in records] == [(wanted["id"], "8")]


async def test_filters_are_sent_to_the_server(gcore_api: FakeGcore) -> None:
    gcore_api.add(instance_id="i-1", schedule_id="s-1", lifecycle_policy_id=4)
    wanted = gcore_api.add(instance_id="i-1", schedule_id="s-1", lifecycle_policy_id=5)
    gcore_api.add(instance_id="i-2", lifecycle_policy_id=5)
    async with adapter(gcore_api) as api:
        records = await api.list_snapshots(
            instance_id="i-1",
            volume_id=wanted["volume_id"],
            schedule_id="s-1",
            lifecycle_policy_id=5,
        )
    assert [r.id for r in records] == [wanted["id"]]
    assert gcore_api.requests[0].query == {
        "instance_id": "i-1",
        "volume_id": wanted["volume_id"],
        "schedule_id": "s-1",
        "lifecycle_policy_id": "5",
        "limit": "1000",
        "offset": "0",
    }


async def test_empty_region_is_one_call(gcore_api: FakeGcore) -> None:
    async with adapter(gcore_api) as api:
        assert await api.list_snapshots() == []
    assert len(gcore_api.requests) == 1


async def test_bad_key_is_an_auth_error(gcore_api: FakeGcore) -> None:
    async with adapter(gcore_api, key="wrong-key") as api:
        with pytest.raises(errors.AuthError) as caught:
            await api.list_snapshots()
    assert caught.value.message == (
        "gcore: GET /cloud/v1/snapshots/1337/7: HTTP 401: Invalid API key"
    )
    assert "wrong-key" not in str(caught.value)
    assert len(gcore_api.requests) == 1


async def test_validation_error_carries_the_server_message(gcore_api: FakeGcore) -> None:
    detail = [{"loc": ["query", "limit"], "msg": "must be <= 1000", "type": "value_error"}]
    gcore_api.fail_next(Fault(422, {"detail": detail}))
    async with adapter(gcore_api) as api:
        with pytest.raises(errors.BadRequest, match=r"^gcore: .*HTTP 422: query\.limit: must be"):
            await api.list_snapshots()
    assert len(gcore_api.requests) == 1


async def test_rate_limit_and_server_errors_are_retried(gcore_api: FakeGcore) -> None:
    gcore_api.add()
    gcore_api.fail_next(
        Fault(500, {"exception_class": "InternalError", "message": "oops"}),
        Fault(429, {"message": "Too many requests"}, headers={"Retry-After": "0"}),
    )
    async with adapter(gcore_api) as api:
        assert len(await api.list_snapshots()) == 1
    assert len(gcore_api.requests) == 3


async def test_rate_limit_to_the_end_is_typed(gcore_api: FakeGcore) -> None:
    gcore_api.fail_next(*[Fault(429, {"message": "Too many requests"})] * 3)
    async with adapter(gcore_api) as api:
        with pytest.raises(errors.RateLimited, match=r"^gcore: .*Too many requests"):
            await api.list_snapshots()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"results": []}, "list-snapshots at offset 0 has no 'count'"),
        ({"count": "1", "results": []}, "'count' of type a string"),
        ({"count": 1, "results": None}, "'results' is null, not a list"),
        ({"count": 1, "results": ["x"]}, "snapshot 1 is a string, not an object"),
        ({"count": 1, "results": [{"name": "no id"}]}, "snapshot 1 has no 'id'"),
        ({"count": 1, "results": [{"id": "a", "size": 1.5}]}, "'size' of type a float"),
    ],
)
async def test_malformed_bodies_are_clear_errors(
    gcore_api: FakeGcore, body: object, message: str
) -> None:
    gcore_api.fail_next(Fault(200, body))
    async with adapter(gcore_api) as api:
        with pytest.raises(errors.BadResponse, match=f"^gcore: .*{message}"):
            await api.list_snapshots()


async def test_unknown_project_is_not_found(gcore_api: FakeGcore) -> None:
    settings = GcoreSettings(api_key=gcore_api.api_key, project_id=1, endpoint=gcore_api.url)
    async with Gcore(settings, retry=FAST) as api:
        with pytest.raises(errors.NotFound, match=r"^gcore: .*Project 1 not found"):
            await api.list_snapshots("7")


def test_regions_need_a_numeric_id() -> None:
    api = Gcore(GcoreSettings(api_key="k", project_id=1, region_id=76))
    assert api.regions(None) == ["76"]
    assert api.regions("8") == ["8"]
    with pytest.raises(NotARegion, match="gcore: --region must be a numeric Gcore region id"):
        api.regions("ch-gva-2")
    without_default = Gcore(GcoreSettings(api_key="k", project_id=1))
    with pytest.raises(ConfigError, match="set GCORE_REGION_ID or pass --region"):
        without_default.regions(None)


def test_settings_from_env() -> None:
    env = {
        "GCORE_API_KEY": "s3cr3t",
        "GCORE_PROJECT_ID": "1337",
        "GCORE_REGION_ID": "7",
        "GCORE_API_ENDPOINT": "http://127.0.0.1:9/",
    }
    settings = GcoreSettings.from_env(env)
    assert (settings.project_id, settings.region_id, settings.endpoint) == (
        1337,
        7,
        "http://127.0.0.1:9",
    )
    assert "s3cr3t" not in repr(settings)
    assert GcoreSettings.from_env({}).endpoint == "https://api.gcore.com"
    with pytest.raises(ConfigError, match="GCORE_PROJECT_ID must be a number, not 'abc'"):
        GcoreSettings.from_env({**env, "GCORE_PROJECT_ID": "abc"})
    with pytest.raises(ConfigError, match="GCORE_REGION_ID must be a number"):
        GcoreSettings.from_env({**env, "GCORE_REGION_ID": "lux"})
    with pytest.raises(ConfigError, match="GCORE_PROJECT_ID is not set"):
        Gcore.from_env({"GCORE_API_KEY": "k"})
