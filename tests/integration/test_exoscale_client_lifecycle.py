"""The async Exoscale client's calls for backups and restores, over HTTP: against the simulator
(instances, snapshots, quotas, templates from moto presigned URLs) and against a server that
answers the wrong shapes."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator

import boto3
import pytest
from aiohttp import web

from worker import errors
from worker.exoscale import ExoscaleClient
from worker.models import TemplateSpec
from worker.retry import RetryPolicy
from worker.settings import ExoscaleSettings
from worker.simulator import Faults, Simulator
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE, OTHER_ZONE = "de-fra-1", "at-vie-1"
WEB = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
DB = "0b7e5d3c-2a19-4f08-8e6d-5c4b3a291807"
FAST = RetryPolicy(attempts=2, base=0.01, cap=0.05)


@pytest.fixture
async def client(simulator) -> AsyncIterator[ExoscaleClient]:
    async with ExoscaleClient(simulator.settings(), retry=FAST) as client:
        yield client


@pytest.fixture
def image(moto_endpoint, s3_bucket) -> tuple[str, bytes, str]:
    """An image on moto: its presigned GET URL, its bytes and their MD5."""
    data = os.urandom(4 * MiB + 3)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="web-1/image.qcow2", Body=data)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": s3_bucket, "Key": "web-1/image.qcow2"}, ExpiresIn=600
    )
    return url, data, hashlib.md5(data).hexdigest()


# -- instances ----------------------------------------------------------------------------


async def test_list_instances_filters_by_labels(client, simulator):
    simulator.add_instance(WEB, ZONE, name="web-1", labels={"backup": "nightly", "tier": "web"})
    simulator.add_instance(DB, ZONE, name="db-1", labels={"backup": "weekly"})
    every = await client.list_instances(ZONE)
    assert sorted(i.name for i in every) == ["db-1", "web-1"]
    nightly = await client.list_instances(ZONE, labels={"backup": "nightly"})
    assert [(i.id, i.labels) for i in nightly] == [(WEB, {"backup": "nightly", "tier": "web"})]
    assert await client.list_instances(ZONE, labels={"backup": "nightly", "tier": "db"}) == []
    assert await client.list_instances(OTHER_ZONE) == []


async def test_get_instance_and_its_template(client, simulator):
    simulator.add_instance(
        WEB, ZONE, labels={"backup": "nightly"}, boot_mode="uefi", default_user="debian"
    )
    instance = await client.get_instance(ZONE, WEB)
    assert (instance.id, instance.state, instance.labels) == (WEB, "running", {"backup": "nightly"})
    assert instance.created_at and instance.template_id
    template = await client.get_template(ZONE, instance.template_id)
    assert (template.boot_mode, template.default_user) == ("uefi", "debian")
    assert (template.ssh_key_enabled, template.password_enabled) == (True, False)
    with pytest.raises(errors.NotFound):
        await client.get_instance(OTHER_ZONE, WEB)


# -- snapshots ------------------------------------------------------------------------------


async def test_create_then_delete_a_snapshot(client, simulator):
    simulator.add_instance(WEB, ZONE)
    created = await client.create_snapshot(ZONE, WEB)
    assert created.reference_command == "get-snapshot"
    done = await client.wait_operation(ZONE, created.id, timeout=60)
    snapshot = await client.get_snapshot(ZONE, done.reference_id)
    assert (snapshot.state, snapshot.instance_id) == ("ready", WEB)
    assert snapshot.created_at
    assert [s.id for s in await client.list_snapshots(ZONE)] == [snapshot.id]
    quota = await client.get_quota(ZONE, "snapshot")
    assert (quota.resource, quota.usage, quota.limit) == ("snapshot", 1, -1)
    assert quota.unlimited and quota.available is None and not quota.exhausted

    deleted = await client.delete_snapshot(ZONE, snapshot.id)
    await client.wait_operation(ZONE, deleted.id, timeout=60)
    with pytest.raises(errors.NotFound):
        await client.get_snapshot(ZONE, snapshot.id)
    assert (await client.get_quota(OTHER_ZONE, "snapshot")).usage == 0


async def test_a_full_snapshot_quota_is_quota_exceeded():
    sim = Simulator(key="EXOquota", secret="quota-secret", export_seconds=0, snapshot_quota=1)
    sim.add_instance(WEB, ZONE)
    with sim.running():
        async with ExoscaleClient(sim.settings(), retry=FAST) as client:
            quota = await client.get_quota(ZONE, "snapshot")
            assert (quota.available, quota.exhausted) == (1, False)
            await client.create_snapshot(ZONE, WEB)
            with pytest.raises(errors.QuotaExceeded) as info:
                await client.create_snapshot(ZONE, WEB)
    assert str(info.value) == (
        f"exoscale: no snapshot of instance {WEB} in {ZONE}: "
        "the snapshot quota is used up (1 used, limit 1)"
    )
    assert info.value.quota is not None and info.value.quota.exhausted
    assert errors.is_permanent(info.value)


async def test_an_injected_quota_refusal_is_quota_exceeded_too(client, simulator):
    simulator.add_instance(WEB, ZONE)
    simulator.set_faults(Faults(quota_errors=1))
    with pytest.raises(errors.QuotaExceeded, match=r"used up \(0 used, limit unlimited\)"):
        await client.create_snapshot(ZONE, WEB)
    assert (await client.create_snapshot(ZONE, WEB)).state == "pending"


async def test_other_refusals_of_create_snapshot_stay_what_they_are(client, simulator):
    with pytest.raises(errors.NotFound):
        await client.create_snapshot(ZONE, WEB)
    settings = ExoscaleSettings(key=simulator.key, secret="wrong", endpoint=simulator.endpoint)
    simulator.add_instance(WEB, ZONE)
    async with ExoscaleClient(settings, retry=FAST) as refused:
        with pytest.raises(errors.AuthError) as info:
            await refused.create_snapshot(ZONE, WEB)
    assert not isinstance(info.value, errors.QuotaExceeded)


# -- templates ------------------------------------------------------------------------------


def spec(url: str, md5: str, **extra: object) -> TemplateSpec:
    return TemplateSpec(name="web-1 restored", url=url, checksum=md5, **extra)  # type: ignore[arg-type]


async def test_register_a_template_from_a_presigned_url(client, simulator, image, caplog):
    caplog.set_level(logging.DEBUG)
    url, data, md5 = image
    operation = await client.register_template(
        ZONE, spec(url, md5, boot_mode="uefi", default_user="debian", password_enabled=True)
    )
    simulator.wait_for_fetches()
    done = await client.wait_operation(ZONE, operation.id, timeout=60)
    template = await client.get_template(ZONE, done.reference_id)
    assert (template.size, template.checksum) == (len(data), md5)
    assert (template.boot_mode, template.default_user) == ("uefi", "debian")
    assert (template.password_enabled, template.ssh_key_enabled) == (True, True)
    assert (template.zones, template.visibility) == ((ZONE,), "private")
    # The URL it was read from is a presigned URL: not in repr, raw or the logs.
    assert "url" not in template.raw and url not in repr(template)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("worker"))
    assert "template fetch from 127.0.0.1" in ours  # (moto's own log shows the URL it serves)
    assert url.split("?")[1] not in ours

    assert [t.id for t in await client.list_templates(ZONE)] == [template.id]
    assert await client.list_templates(OTHER_ZONE) == []
    with pytest.raises(errors.NotFound):
        await client.get_template(OTHER_ZONE, template.id)
    public = await client.list_templates(ZONE, visibility="public", family="ubuntu")
    assert [t.visibility for t in public] == ["public"]


async def test_a_checksum_mismatch_fails_the_registration(client, simulator, image):
    url, _, md5 = image
    wrong = hashlib.md5(b"other bytes").hexdigest()
    operation = await client.register_template(ZONE, spec(url, wrong))
    simulator.wait_for_fetches()
    with pytest.raises(errors.OperationFailed, match="reason: incorrect") as info:
        await client.wait_operation(ZONE, operation.id, timeout=60)
    assert f"checksum mismatch: expected {wrong}, got {md5}" in str(info.value)
    assert url.split("?")[1] not in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": ""}, "name"),
        ({"url": "ftp://host/image"}, "HTTP or HTTPS"),
        ({"checksum": "abc"}, "MD5"),
        ({"boot_mode": "bios"}, "legacy or uefi"),
        ({"default_user": "x" * 256}, "default user"),
        ({"description": "x" * 256}, "description"),
        ({"size": 0}, "size"),
    ],
)
def test_template_spec_refuses_what_the_api_would(values, message):
    base = {
        "name": "t",
        "url": "https://sos.example/i?X-Amz-Signature=s3cr3t",
        "checksum": "a" * 32,
    }
    with pytest.raises(ValueError, match=message) as info:
        TemplateSpec(**{**base, **values})
    assert "s3cr3t" not in str(info.value)


def test_template_spec_hides_its_url_and_sends_a_lower_case_checksum():
    made = TemplateSpec(
        name="t", url="https://sos.example/i?X-Amz-Signature=s3cr3t", checksum="A" * 32
    )
    assert "s3cr3t" not in repr(made)
    assert made.to_api() == {
        "name": "t",
        "url": "https://sos.example/i?X-Amz-Signature=s3cr3t",
        "checksum": "a" * 32,
        "ssh-key-enabled": True,
        "password-enabled": False,
    }


# -- wrong shapes ---------------------------------------------------------------------------


@pytest.fixture
async def wrong_api() -> AsyncIterator[tuple[dict[str, object], ExoscaleSettings]]:
    """A server answering each path with the JSON body set for it, whatever the query."""
    bodies: dict[str, object] = {}

    async def handle(request: web.Request) -> web.Response:
        path = request.path.split("/v2", 1)[1]
        return web.json_response(bodies[path])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = ExoscaleSettings(
        key="EXOwrong", secret="wrong-secret", endpoint=f"http://127.0.0.1:{port}/{{zone}}/v2"
    )
    yield bodies, settings
    await runner.cleanup()


def instance(labels: object = None, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"id": str(uuid.uuid4()), "name": "vm", "state": "running"}
    if labels is not None:
        body["labels"] = labels
    return {**body, **extra}


async def test_labels_are_matched_on_our_side(wrong_api):
    # A server that ignores any labels filter: the client still lists only matching ones.
    bodies, settings = wrong_api
    nightly = instance({"backup": "nightly"})
    bodies["/instance"] = {"instances": [nightly, instance({"backup": "weekly"}), instance()]}
    async with ExoscaleClient(settings, retry=FAST) as client:
        found = await client.list_instances(ZONE, labels={"backup": "nightly"})
        assert [i.id for i in found] == [nightly["id"]]
        bodies["/instance"] = {}  # no key when there are none
        assert await client.list_instances(ZONE) == []


@pytest.mark.parametrize(
    ("path", "body", "call", "message"),
    [
        ("/instance", {"instances": {"id": "x"}}, "list_instances", "instances list"),
        ("/instance", {"instances": [instance(["backup"])]}, "list_instances", "labels"),
        ("/instance", {"instances": [instance({"a": 1})]}, "list_instances", "labels"),
        ("/instance/i", instance(template="ubuntu"), "get_instance", "'template'"),
        ("/instance/i", {"name": "no id"}, "get_instance", "'id'"),
        ("/template/i", {"id": "t", "size": "10 GiB"}, "get_template", "'size'"),
        ("/template/i", {"id": "t", "size": True}, "get_template", "'size'"),
        ("/template/i", {"id": "t", "zones": "de-fra-1"}, "get_template", "'zones'"),
        ("/template/i", {"id": "t", "ssh-key-enabled": "yes"}, "get_template", "ssh-key"),
        ("/template", {"templates": "none"}, "list_templates", "templates list"),
        ("/quota/snapshot", {"usage": "3", "limit": 5}, "get_quota", "'usage'"),
        ("/quota/snapshot", {"usage": 3}, "get_quota", "'limit'"),
        ("/quota/snapshot", {"usage": 3, "limit": -5}, "get_quota", "usage or limit"),
        ("/quota/snapshot", [], "get_quota", "quota"),
    ],
)
async def test_wrong_shapes_are_bad_responses(wrong_api, path, body, call, message):
    bodies, settings = wrong_api
    bodies[path] = body
    arguments = {
        "list_instances": (ZONE,),
        "get_instance": (ZONE, "i"),
        "get_template": (ZONE, "i"),
        "list_templates": (ZONE,),
        "get_quota": (ZONE, "snapshot"),
    }[call]
    async with ExoscaleClient(settings, retry=FAST) as client:
        with pytest.raises(errors.BadResponse, match=message):
            await getattr(client, call)(*arguments)
