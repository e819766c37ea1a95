"""The simulator against the official Exoscale artefacts: the OpenAPI spec and the sync client.

Every response body is validated against the response schema of its operation in the spec
shipped in the ``exoscale`` package, and must not carry members the schema does not declare
(the spec leaves objects open, so a misspelt member would otherwise pass). The official client
signs its requests with ``requests-exoscale-auth``, so the simulator is held to that signer too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import exoscale
import exoscale.api.v2 as exoscale_v2
import pytest
import requests
from exoscale.api.exceptions import ExoscaleAPIAuthException, ExoscaleAPIServerException
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.fixtures.simulator import ManualClock, signed_request
from worker.simulator import Faults, Simulator
from worker.units import MiB

pytestmark = pytest.mark.integration

SPEC = json.loads((Path(exoscale.__file__).parent / "openapi.json").read_text())
SPEC_URI = "urn:exoscale:openapi"
# OpenAPI 3.0 schemas are draft-4 style (boolean exclusiveMinimum).
REGISTRY = Registry().with_resource(SPEC_URI, Resource(contents=SPEC, specification=DRAFT4))

SNAPSHOT = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
OTHER = "0b7e5d3c-2a19-4f08-8e6d-5c4b3a291807"
WEB = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
DB = "7d6c5b4a-3928-4170-8f6e-5d4c3b2a1908"


def response_schema(path: str, method: str) -> dict[str, Any]:
    operation = SPEC["paths"][path][method]
    return operation["responses"]["200"]["content"]["application/json"]["schema"]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = SPEC
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def undeclared(instance: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Return the paths of object members that ``schema`` does not declare."""
    schema = resolve(schema)
    found: list[str] = []
    if isinstance(instance, dict) and "properties" in schema:
        for name, value in instance.items():
            if name not in schema["properties"]:
                found.append(f"{where}/{name}")
            else:
                found += undeclared(value, schema["properties"][name], f"{where}/{name}")
    elif isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            found += undeclared(item, schema["items"], f"{where}/{index}")
    return found


def assert_conforms(body: Any, path: str, method: str = "get") -> None:
    """Validate a response body against the spec's schema for ``method path``."""
    schema = {"$ref": f"{SPEC_URI}#" + _pointer(path, method)}
    validator = Draft4Validator(schema, registry=REGISTRY, format_checker=FormatChecker())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], f"{method.upper()} {path}: {errors}"
    assert undeclared(body, response_schema(path, method)) == [], f"{method.upper()} {path}"


def _pointer(path: str, method: str) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method}/responses/200/content/application~1json/schema"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def sim(clock):
    sim = Simulator(key="EXOconform", secret="conform-secret", export_seconds=5, clock=clock)
    sim.add_snapshot(SNAPSHOT, 2 * MiB, name="web-1 nightly")
    sim.add_snapshot(OTHER, MiB, zone="ch-gva-2", state="exported")
    with sim.running():
        yield sim


def test_validator_rejects_a_wrong_body():
    # The checks below would be worthless if a bad body passed.
    for body, path in [
        ({"id": "not-a-uuid"}, "/operation/{id}"),  # formats are checked
        ({"state": "finished"}, "/operation/{id}"),
        ({"created-at": "yesterday"}, "/snapshot/{id}"),
        ({"snapshots": [{"export": {"presigned_url": "x"}}]}, "/snapshot"),  # undeclared member
    ]:
        with pytest.raises(AssertionError):
            assert_conforms(body, path)


def test_every_body_conforms_through_the_lifecycle(sim, clock):
    snapshot_path = f"/snapshot/{SNAPSHOT}"
    assert_conforms(signed_request(sim, "GET", "/snapshot").json(), "/snapshot")
    assert_conforms(signed_request(sim, "GET", snapshot_path).json(), "/snapshot/{id}")

    operation = signed_request(sim, "POST", f"{snapshot_path}:export").json()
    assert_conforms(operation, "/snapshot/{id}:export", "post")
    exporting = signed_request(sim, "GET", "/snapshot").json()
    assert {s["state"] for s in exporting["snapshots"]} == {"exporting", "exported"}
    assert_conforms(exporting, "/snapshot")

    sim.image_md5(SNAPSHOT)
    clock.advance(5)
    done = signed_request(sim, "GET", f"/operation/{operation['id']}").json()
    assert done["state"] == "success"
    assert_conforms(done, "/operation/{id}")
    exported = signed_request(sim, "GET", snapshot_path).json()
    assert "presigned-url" in exported["export"]
    assert_conforms(exported, "/snapshot/{id}")

    instance_id = exported["instance"]["id"]
    instance = signed_request(sim, "GET", f"/instance/{instance_id}").json()
    assert_conforms(instance, "/instance/{id}")
    template = signed_request(sim, "GET", f"/template/{instance['template']['id']}").json()
    assert_conforms(template, "/template/{id}")

    created = signed_request(sim, "POST", f"/instance/{instance_id}:create-snapshot").json()
    assert_conforms(created, "/instance/{id}:create-snapshot", "post")
    snapshotting = signed_request(sim, "GET", f"/snapshot/{created['reference']['id']}").json()
    assert snapshotting["state"] == "snapshotting"
    assert_conforms(snapshotting, "/snapshot/{id}")

    promoted = signed_request(sim, "POST", f"{snapshot_path}:promote", body={"name": "golden"})
    assert_conforms(promoted.json(), "/snapshot/{id}:promote", "post")
    registered = signed_request(
        sim,
        "POST",
        "/template",
        body={
            "name": "restored",
            "url": exported["export"]["presigned-url"],
            "checksum": exported["export"]["md5sum"],
            "ssh-key-enabled": True,
            "password-enabled": False,
            "default-user": "debian",
            "description": "restored from an archive",
            "build": "b1",
            "version": "12",
            "maintainer": "ops",
        },
    )
    assert_conforms(registered.json(), "/template", "post")
    sim.wait_for_fetches()
    clock.advance(5)
    for operation_id in (promoted.json()["id"], registered.json()["id"]):
        finished = signed_request(sim, "GET", f"/operation/{operation_id}").json()
        assert finished["state"] == "success"
        assert_conforms(finished, "/operation/{id}")
        new_template = signed_request(sim, "GET", f"/template/{finished['reference']['id']}")
        assert_conforms(new_template.json(), "/template/{id}")

    deleting = signed_request(sim, "DELETE", f"/snapshot/{OTHER}").json()
    assert_conforms(deleting, "/snapshot/{id}", "delete")
    assert_conforms(requests.get(f"{sim.url}/ch-gva-2/v2/zone", timeout=10).json(), "/zone")


@pytest.fixture
def image(moto_endpoint, s3_bucket) -> tuple[str, str]:
    """A presigned GET URL of an object on moto, and the object's MD5."""
    data = os.urandom(2 * MiB + 5)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="image.qcow2", Body=data)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": s3_bucket, "Key": "image.qcow2"}, ExpiresIn=600
    )
    return url, hashlib.md5(data).hexdigest()


def test_backup_and_restore_bodies_conform(clock, image):
    sim = Simulator(
        key="EXOconform", secret="conform-secret", export_seconds=5, clock=clock, snapshot_quota=1
    )
    sim.add_instance(WEB, name="web-1", labels={"backup": "nightly"}, boot_mode="uefi")
    sim.add_instance(DB, name="db-1", default_user="debian", password_enabled=True)
    with sim.running():
        _backup_and_restore_bodies_conform(sim, clock, image)


def _backup_and_restore_bodies_conform(sim: Simulator, clock, image: tuple[str, str]) -> None:
    def call(method: str, path: str, body: Any = None, zone: str = "ch-gva-2") -> Any:
        response = signed_request(sim, method, path, zone=zone, body=body)
        assert response.ok, (path, response.text)
        return response.json()

    listed = call("GET", "/instance")
    assert len(listed["instances"]) == 2
    assert_conforms(listed, "/instance")
    filtered = call("GET", "/instance?labels=" + quote("backup=nightly"))
    assert [i["id"] for i in filtered["instances"]] == [WEB]
    assert_conforms(filtered, "/instance")
    for instance_id in (WEB, DB):
        instance = call("GET", f"/instance/{instance_id}")
        assert_conforms(instance, "/instance/{id}")
        assert_conforms(call("GET", f"/template/{instance['template']['id']}"), "/template/{id}")
    for visibility in ("public", "private"):
        assert_conforms(call("GET", f"/template?visibility={visibility}"), "/template")

    created = call("POST", f"/instance/{WEB}:create-snapshot")
    assert_conforms(created, "/instance/{id}:create-snapshot", "post")
    snapshot_path = f"/snapshot/{created['reference']['id']}"
    assert_conforms(call("GET", snapshot_path), "/snapshot/{id}")
    clock.advance(5)
    done = call("GET", f"/operation/{created['id']}")
    assert done["state"] == "success"
    assert_conforms(done, "/operation/{id}")
    ready = call("GET", snapshot_path)
    assert ready["state"] == "ready"
    assert_conforms(ready, "/snapshot/{id}")
    assert_conforms(call("GET", "/snapshot"), "/snapshot")

    quota = call("GET", "/quota/snapshot")
    assert quota == {"resource": "snapshot", "usage": 1, "limit": 1}
    assert_conforms(quota, "/quota/{entity}")
    assert_conforms(call("GET", "/quota"), "/quota")
    # The spec documents no error body for create-snapshot: the compute API's {"message"}.
    refused = signed_request(sim, "POST", f"/instance/{DB}:create-snapshot")
    assert refused.status_code == 403
    assert list(refused.json()) == ["message"] and isinstance(refused.json()["message"], str)

    deleting = call("DELETE", snapshot_path)
    assert_conforms(deleting, "/snapshot/{id}", "delete")
    clock.advance(5)
    assert_conforms(call("GET", f"/operation/{deleting['id']}"), "/operation/{id}")

    url, md5 = image
    body = {
        "name": "web-1 restored",
        "url": url,
        "checksum": md5,
        "ssh-key-enabled": True,
        "password-enabled": False,
        "boot-mode": "uefi",
        "default-user": "debian",
        "description": "ch-gva-2 snapshot of web-1",
    }
    registered = call("POST", "/template", body, zone="de-fra-1")
    assert_conforms(registered, "/template", "post")
    mismatched = call("POST", "/template", {**body, "checksum": "0" * 32}, zone="de-fra-1")
    sim.wait_for_fetches()
    clock.advance(5)
    failed = call("GET", f"/operation/{mismatched['id']}", zone="de-fra-1")
    assert (failed["state"], failed["reason"]) == ("failure", "incorrect")
    assert_conforms(failed, "/operation/{id}")
    succeeded = call("GET", f"/operation/{registered['id']}", zone="de-fra-1")
    assert succeeded["state"] == "success"
    assert_conforms(succeeded, "/operation/{id}")
    template = call("GET", f"/template/{succeeded['reference']['id']}", zone="de-fra-1")
    assert_conforms(template, "/template/{id}")
    assert_conforms(call("GET", "/template?visibility=private", zone="de-fra-1"), "/template")

    assert_conforms(call("DELETE", f"/instance/{DB}"), "/instance/{id}", "delete")


def test_failed_operation_conforms(sim, clock):
    sim.set_faults(Faults(export_failures=1, failure_reason="unavailable"))
    operation = signed_request(sim, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    sim.image_md5(SNAPSHOT)
    clock.advance(5)
    failed = signed_request(sim, "GET", f"/operation/{operation['id']}").json()
    assert (failed["state"], failed["reason"]) == ("failure", "unavailable")
    assert_conforms(failed, "/operation/{id}")


@pytest.fixture
def official(simulator, monkeypatch):
    """The official client on the simulator, polling without the 3 s minimum."""
    monkeypatch.setattr(exoscale_v2, "_poll_interval", lambda run_time: 0.01)
    url = simulator.endpoint.replace("{zone}", "ch-gva-2")
    return exoscale_v2.Client(simulator.key, simulator.secret, url=url)


def test_official_client_exports_and_waits(simulator, official):
    simulator.add_snapshot(SNAPSHOT, 3 * MiB)
    assert [s["id"] for s in official.list_snapshots()["snapshots"]] == [SNAPSHOT]
    assert official.get_snapshot(id=SNAPSHOT)["state"] == "ready"
    operation = official.export_snapshot(id=SNAPSHOT)
    result = official.wait(operation["id"], max_wait_time=60)
    assert result["state"] == "success"
    assert result["reference"]["id"] == SNAPSHOT

    export = official.get_snapshot(id=SNAPSHOT)["export"]
    body = requests.get(export["presigned-url"], timeout=30).content
    assert hashlib.md5(body).hexdigest() == export["md5sum"] == simulator.image_md5(SNAPSHOT)
    assert "ch-gva-2" in [zone["name"] for zone in official.list_zones()["zones"]]


def test_official_client_waits_through_server_errors(simulator, official):
    simulator.add_snapshot(SNAPSHOT, MiB)
    operation = official.export_snapshot(id=SNAPSHOT)
    simulator.set_faults(Faults(api_errors=3), snapshot_id=SNAPSHOT)
    assert official.wait(operation["id"], max_wait_time=60)["state"] == "success"


def test_official_client_sees_a_failed_operation(simulator, official):
    simulator.add_snapshot(SNAPSHOT, MiB)
    simulator.set_faults(Faults(export_failures=1, failure_reason="busy"), snapshot_id=SNAPSHOT)
    operation = official.export_snapshot(id=SNAPSHOT)
    with pytest.raises(ExoscaleAPIServerException, match="failure, busy"):
        official.wait(operation["id"], max_wait_time=60)


def test_official_client_is_refused_with_a_wrong_secret(simulator):
    url = simulator.endpoint.replace("{zone}", "ch-gva-2")
    client = exoscale_v2.Client(simulator.key, "not-the-secret", url=url)
    with pytest.raises(ExoscaleAPIAuthException, match="403"):
        client.list_snapshots()


def test_official_client_backs_up_and_restores(simulator, official, image):
    simulator.add_instance(
        WEB, labels={"backup": "nightly", "tier": "web"}, boot_mode="uefi", default_user="debian"
    )
    simulator.add_instance(DB, labels={"backup": "nightly", "tier": "db"})
    # A query value with a space, signed by requests-exoscale-auth and checked by the simulator.
    listed = official.list_instances(labels="backup=nightly tier=web")["instances"]
    assert [i["id"] for i in listed] == [WEB]
    assert len(official.list_instances(labels="backup=nightly")["instances"]) == 2

    created = official.wait(official.create_snapshot(id=WEB)["id"], max_wait_time=60)
    snapshot = official.get_snapshot(id=created["reference"]["id"])
    assert (snapshot["state"], snapshot["instance"]["id"]) == ("ready", WEB)
    assert official.get_quota(entity="snapshot") == {
        "resource": "snapshot",
        "usage": 1,
        "limit": -1,
    }
    official.wait(official.delete_snapshot(id=snapshot["id"])["id"], max_wait_time=60)
    assert official.list_snapshots().get("snapshots", []) == []

    source = official.get_template(id=official.get_instance(id=WEB)["template"]["id"])
    url, md5 = image
    registering = official.register_template(
        name="web-1 restored",
        url=url,
        checksum=md5,
        ssh_key_enabled=source["ssh-key-enabled"],
        password_enabled=source["password-enabled"],
        boot_mode=source["boot-mode"],
        default_user=source["default-user"],
    )
    done = official.wait(registering["id"], max_wait_time=60)
    template = official.get_template(id=done["reference"]["id"])
    assert (template["checksum"], template["size"]) == (md5, 2 * MiB + 5)
    assert (template["boot-mode"], template["default-user"]) == ("uefi", "debian")
    private = official.list_templates(visibility="private")["templates"]
    assert template["id"] in [t["id"] for t in private]


def test_official_client_sees_quota_and_checksum_refusals(simulator, official, image):
    simulator.add_instance(WEB)
    simulator.set_snapshot_quota(0)
    with pytest.raises(ExoscaleAPIAuthException, match=r"403.*[Qq]uota"):
        official.create_snapshot(id=WEB)

    url, _ = image
    registering = official.register_template(
        name="broken",
        url=url,
        checksum="0" * 32,
        ssh_key_enabled=True,
        password_enabled=False,
    )
    with pytest.raises(ExoscaleAPIServerException, match="failure, incorrect"):
        official.wait(registering["id"], max_wait_time=60)
