"""The simulator against the official Exoscale artefacts: the OpenAPI spec and the sync client.

Every response body is validated against the response schema of its operation in the spec
shipped in the ``exoscale`` package, and must not carry members the schema does not declare
(the spec leaves objects open, so a misspelt member would otherwise pass).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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
