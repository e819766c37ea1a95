"""The InstaVM adapter against the fake InstaVM API over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fakes.instavm import FakeInstaVM
from tests.fakes.server import Fault
from worker import errors
from worker.errors import ConfigError
from worker.providers.instavm import InstaVM, InstaVMSettings
from worker.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, base=0.001, cap=0.01)


def adapter(fake: FakeInstaVM, *, key: str | None = None, snapshot_type="user") -> InstaVM:
    settings = InstaVMSettings(api_key=key or fake.api_key, endpoint=fake.url)
    return InstaVM(settings, retry=FAST, snapshot_type=snapshot_type)


async def test_lists_user_snapshots_with_sizes_in_bytes(instavm_api: FakeInstaVM) -> None:
    mine = instavm_api.add()
    failed = instavm_api.add(status="failed", source_vm_id=None, name=None)
    instavm_api.add(type="system", is_public=True)
    async with adapter(instavm_api) as api:
        records = await api.list_snapshots()
    request = instavm_api.requests[0]
    assert request.query == {"type": "user"}
    assert request.headers["X-API-Key"] == "instavm-key"
    assert [r.id for r in records] == [mine["id"], failed["id"]]
    first, second = records
    assert (first.provider, first.region, first.status, first.raw_status) == (
        "instavm",
        "global",
        "ready",
        "ready",
    )
    assert first.size_bytes == mine["size_bytes"]
    assert first.source_id == "vm-1"
    assert first.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert (second.status, second.source_id, second.name) == ("error", None, "")


async def test_type_filter_and_both_kinds(instavm_api: FakeInstaVM) -> None:
    instavm_api.add()
    system = instavm_api.add(type="system")
    async with adapter(instavm_api, snapshot_type="system") as api:
        assert [r.id for r in await api.list_snapshots()] == [system["id"]]
    async with adapter(instavm_api, snapshot_type=None) as api:
        assert len(await api.list_snapshots()) == 2
    assert "type" not in instavm_api.requests[-1].query


async def test_other_regions_have_none(instavm_api: FakeInstaVM) -> None:
    instavm_api.add()
    async with adapter(instavm_api) as api:
        assert await api.list_snapshots("ch-gva-2") == []
        assert len(await api.list_snapshots("global")) == 1
    assert len(instavm_api.requests) == 1


async def test_empty_list(instavm_api: FakeInstaVM) -> None:
    async with adapter(instavm_api) as api:
        assert await api.list_snapshots() == []


async def test_bad_key_is_an_auth_error(instavm_api: FakeInstaVM) -> None:
    async with adapter(instavm_api, key="wrong-key") as api:
        with pytest.raises(errors.AuthError) as caught:
            await api.list_snapshots()
    assert caught.value.message == "instavm: GET /v1/snapshots: HTTP 403: Invalid API key"
    assert "wrong-key" not in str(caught.value)


async def test_unauthenticated_401_detail(instavm_api: FakeInstaVM) -> None:
    instavm_api.fail_next(Fault(401, {"detail": "Not authenticated"}))
    async with adapter(instavm_api) as api:
        with pytest.raises(errors.AuthError, match=r"HTTP 401: Not authenticated$"):
            await api.list_snapshots()


async def test_validation_error_lists_fastapi_details(instavm_api: FakeInstaVM) -> None:
    async with adapter(instavm_api, snapshot_type="everything") as api:
        with pytest.raises(errors.BadRequest) as caught:
            await api.list_snapshots()
    assert caught.value.status == 422
    assert caught.value.message == (
        "instavm: GET /v1/snapshots: HTTP 422: "
        "query.type: String should match pattern '^(user|system)$'"
    )


async def test_server_errors_are_retried(instavm_api: FakeInstaVM) -> None:
    instavm_api.add()
    instavm_api.fail_next(
        Fault(503, {"detail": "Service Unavailable"}),
        Fault(429, {"detail": "rate limited"}, headers={"Retry-After": "0"}),
    )
    async with adapter(instavm_api) as api:
        assert len(await api.list_snapshots()) == 1
    assert len(instavm_api.requests) == 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(200, {"snapshots": []}), "list-snapshots is an object, not a list"),
        (Fault(200, [{"id": "a", "created_at": "2025-01-01T00:00:00Z"}]), "has no 'status'"),
        (Fault(200, [{"id": "a", "status": "ready"}]), "snapshot 1 has no 'created_at'"),
        (
            Fault(200, [{"id": "a", "status": "ready", "created_at": "x", "size_bytes": "1"}]),
            "'size_bytes' of type a string",
        ),
        (Fault(200, text="<html>login</html>"), "HTTP 200 with an HTML page instead of JSON"),
    ],
)
async def test_malformed_bodies_are_clear_errors(
    instavm_api: FakeInstaVM, fault: Fault, message: str
) -> None:
    instavm_api.fail_next(fault)
    async with adapter(instavm_api) as api:
        with pytest.raises(errors.BadResponse, match=f"^instavm: .*{message}"):
            await api.list_snapshots()


def test_settings_from_env() -> None:
    env = {"INSTAVM_API_KEY": "s3cr3t", "INSTAVM_API_ENDPOINT": "http://127.0.0.1:9/"}
    assert InstaVMSettings.from_env(env).endpoint == "http://127.0.0.1:9"
    assert "s3cr3t" not in repr(InstaVMSettings.from_env(env))
    assert InstaVMSettings.from_env({}).endpoint == "https://api.instavm.io"
    with pytest.raises(ConfigError, match="INSTAVM_API_KEY is not set"):
        InstaVM.from_env({})
