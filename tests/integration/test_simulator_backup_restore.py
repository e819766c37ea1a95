"""The simulator's API for backups on a schedule and restores as templates, over signed HTTP:
instances with labels, create/delete-snapshot, the snapshot quota, register-template reading
its URL (moto presigned URLs), templates per zone, and their faults."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import boto3
import pytest
import requests

from tests.fixtures.simulator import ManualClock, signed_request
from worker.simulator import Faults, Simulator
from worker.simulator.records import timestamp
from worker.units import MiB

pytestmark = pytest.mark.integration

WEB = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
DB = "0b7e5d3c-2a19-4f08-8e6d-5c4b3a291807"
FRA = "9e8d7c6b-5a49-4382-9172-6a5b4c3d2e1f"


def operation(sim: Simulator, body: dict, zone: str = "ch-gva-2") -> dict:
    """Look at an operation once."""
    return signed_request(sim, "GET", f"/operation/{body['id']}", zone=zone).json()


def labels_query(text: str) -> str:
    return "/instance?labels=" + quote(text, safe="")


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def slow_sim(clock) -> Iterator[Simulator]:
    """A simulator whose operations take 5 s of its manual clock, with one instance."""
    sim = Simulator(key="EXOslow", secret="slow-secret", export_seconds=5, clock=clock)
    sim.add_instance(WEB, name="web-1", labels={"backup": "nightly"})
    with sim.running():
        yield sim


@pytest.fixture
def image(moto_endpoint, s3_bucket) -> tuple[str, bytes, str]:
    """An object on moto: its presigned GET URL, its bytes and their MD5."""
    data = os.urandom(3 * MiB + 17)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="archives/web-1.qcow2", Body=data)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": s3_bucket, "Key": "archives/web-1.qcow2"}, ExpiresIn=600
    )
    return url, data, hashlib.md5(data).hexdigest()


def registration(url: str, checksum: str, **extra: object) -> dict:
    return {
        "name": "web-1 restored",
        "url": url,
        "checksum": checksum,
        "ssh-key-enabled": True,
        "password-enabled": False,
        **extra,
    }


# -- instances ----------------------------------------------------------------------------


def test_instances_are_listed_per_zone_and_filtered_by_labels(simulator):
    simulator.add_instance(WEB, name="web-1", labels={"backup": "nightly", "tier": "web"})
    simulator.add_instance(DB, name="db-1", labels={"backup": "weekly", "tier": "db"})
    simulator.add_instance(FRA, zone="de-fra-1", labels={"backup": "nightly"})

    listed = signed_request(simulator, "GET", "/instance").json()["instances"]
    assert sorted((i["id"], i["name"]) for i in listed) == [(DB, "db-1"), (WEB, "web-1")]
    assert {i["id"]: i["labels"] for i in listed}[WEB] == {"backup": "nightly", "tier": "web"}

    nightly = signed_request(simulator, "GET", labels_query("backup=nightly")).json()
    assert [i["id"] for i in nightly["instances"]] == [WEB]
    both = signed_request(simulator, "GET", labels_query("backup=weekly tier=db")).json()
    assert [i["id"] for i in both["instances"]] == [DB]
    none = signed_request(simulator, "GET", labels_query("backup=weekly tier=web")).json()
    assert none == {"instances": []}
    fra = signed_request(simulator, "GET", "/instance", zone="de-fra-1").json()["instances"]
    assert [i["id"] for i in fra] == [FRA]

    refused = signed_request(simulator, "GET", labels_query("backup"))
    assert refused.status_code == 400
    assert "key=value" in refused.json()["message"]


def test_an_instance_template_carries_what_a_restore_needs(simulator):
    simulator.add_instance(
        WEB, boot_mode="uefi", default_user="debian", password_enabled=True, ssh_key_enabled=False
    )
    simulator.add_instance(DB)  # the zone's public template
    for instance_id, expected in [
        (WEB, ("uefi", "debian", False, True, "private")),
        (DB, ("uefi", "ubuntu", True, False, "public")),
    ]:
        instance = signed_request(simulator, "GET", f"/instance/{instance_id}").json()
        template_id = instance["template"]["id"]
        template = signed_request(simulator, "GET", f"/template/{template_id}").json()
        fields = ("boot-mode", "default-user", "ssh-key-enabled", "password-enabled", "visibility")
        assert tuple(template[name] for name in fields) == expected

    simulator.add_instance(FRA, template_id=template_id)
    shared = signed_request(simulator, "GET", f"/instance/{FRA}").json()
    assert shared["template"]["id"] == template_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instance_id": "nope"}, "must be a UUID"),
        ({"labels": {"has space": "x"}}, "label key"),
        ({"labels": {"k": 3}}, "string value"),
        ({"zone": "xx-nowhere-1"}, "unknown zone"),
        ({"disk_size": 5}, "10..51200"),
        ({"boot_mode": "bios"}, "legacy or uefi"),
        ({"template_id": str(uuid.uuid4())}, "no template"),
        ({"template_id": str(uuid.uuid4()), "boot_mode": "uefi"}, "not both"),
    ],
)
def test_add_instance_refuses_bad_input(kwargs, message):
    sim = Simulator(key="EXOk", secret="s")
    with pytest.raises(ValueError, match=message):
        sim.add_instance(**{"instance_id": WEB, **kwargs})


def test_add_instance_refuses_a_duplicate():
    sim = Simulator(key="EXOk", secret="s")
    sim.add_instance(WEB)
    with pytest.raises(ValueError, match="already exists"):
        sim.add_instance(WEB)


# -- snapshots ------------------------------------------------------------------------------


def test_create_snapshot_turns_ready_with_created_at_of_the_simulator_clock(slow_sim, clock):
    clock.advance(300)  # the simulator's now, not the real one (signatures last 600 s)
    taken_at = clock.now
    operation_body = signed_request(slow_sim, "POST", f"/instance/{WEB}:create-snapshot").json()
    snapshot_id = operation_body["reference"]["id"]
    assert operation_body["state"] == "pending"
    assert signed_request(slow_sim, "GET", f"/snapshot/{snapshot_id}").json()["state"] == (
        "snapshotting"
    )

    clock.advance(5)
    assert operation(slow_sim, operation_body)["state"] == "success"
    listed = signed_request(slow_sim, "GET", "/snapshot").json()["snapshots"]
    assert [s["id"] for s in listed] == [snapshot_id]
    snapshot = listed[0]
    assert snapshot["state"] == "ready"
    assert snapshot["created-at"] == timestamp(taken_at)
    assert snapshot["instance"] == {"id": WEB, "name": "web-1"}
    assert snapshot["name"].startswith("web-1_")
    instance = signed_request(slow_sim, "GET", f"/instance/{WEB}").json()
    assert instance["snapshots"] == [{"id": snapshot_id}]


def test_create_snapshot_of_an_unknown_or_foreign_instance_is_404(simulator):
    simulator.add_instance(FRA, zone="de-fra-1")
    for instance_id in (FRA, WEB):
        response = signed_request(simulator, "POST", f"/instance/{instance_id}:create-snapshot")
        assert response.status_code == 404
        assert instance_id in response.json()["message"]


def test_delete_snapshot_makes_it_gone(slow_sim, clock):
    created = signed_request(slow_sim, "POST", f"/instance/{WEB}:create-snapshot").json()
    snapshot_id = created["reference"]["id"]
    clock.advance(5)
    assert operation(slow_sim, created)["state"] == "success"
    quota = signed_request(slow_sim, "GET", "/quota/snapshot").json()
    assert quota == {"resource": "snapshot", "usage": 1, "limit": -1}

    deleting = signed_request(slow_sim, "DELETE", f"/snapshot/{snapshot_id}").json()
    assert deleting["state"] == "pending"
    assert signed_request(slow_sim, "GET", f"/snapshot/{snapshot_id}").json()["state"] == (
        "deleting"
    )
    clock.advance(5)
    assert operation(slow_sim, deleting)["state"] == "success"
    assert signed_request(slow_sim, "GET", f"/snapshot/{snapshot_id}").status_code == 404
    assert signed_request(slow_sim, "GET", "/snapshot").json() == {"snapshots": []}
    assert signed_request(slow_sim, "GET", f"/instance/{WEB}").json()["snapshots"] == []
    assert signed_request(slow_sim, "GET", "/quota/snapshot").json()["usage"] == 0


def test_snapshot_quota_refuses_create_snapshot_with_the_api_error_shape():
    sim = Simulator(key="EXOquota", secret="quota-secret", export_seconds=0, snapshot_quota=2)
    sim.add_instance(WEB)
    sim.add_snapshot(DB, MiB, zone="de-fra-1")  # the quota counts every zone
    with sim.running():
        assert signed_request(sim, "POST", f"/instance/{WEB}:create-snapshot").ok
        refused = signed_request(sim, "POST", f"/instance/{WEB}:create-snapshot")
        assert refused.status_code == 403
        assert refused.headers["Content-Type"].startswith("application/json")
        body = refused.json()
        assert list(body) == ["message"]
        assert "quota" in body["message"].lower() and "snapshot" in body["message"]
        quota = signed_request(sim, "GET", "/quota/snapshot", zone="de-fra-1").json()
        assert quota == {"resource": "snapshot", "usage": 2, "limit": 2}
        assert len(signed_request(sim, "GET", "/snapshot").json()["snapshots"]) == 1

        sim.set_snapshot_quota(-1)
        assert signed_request(sim, "POST", f"/instance/{WEB}:create-snapshot").ok


def test_quota_errors_fault_refuses_the_next_snapshots_only(simulator):
    simulator.add_instance(WEB)
    simulator.set_faults(Faults(quota_errors=2))
    path = f"/instance/{WEB}:create-snapshot"
    statuses = [signed_request(simulator, "POST", path).status_code for _ in range(3)]
    assert statuses == [403, 403, 200]
    assert signed_request(simulator, "GET", "/quota/snapshot").json()["usage"] == 1


def test_quotas_of_other_entities_and_unknown_ones(simulator):
    simulator.add_instance(WEB, boot_mode="legacy")  # with a private template of its own
    listed = signed_request(simulator, "GET", "/quota").json()["quotas"]
    assert {q["resource"]: (q["usage"], q["limit"]) for q in listed} == {
        "snapshot": (0, -1),
        "template": (1, -1),
        "user_vm": (1, -1),
    }
    missing = signed_request(simulator, "GET", "/quota/bucket")
    assert missing.status_code == 404
    assert "bucket" in missing.json()["message"]


def test_deleting_an_instance_deletes_its_snapshots(simulator):
    simulator.add_instance(WEB)
    created = signed_request(simulator, "POST", f"/instance/{WEB}:create-snapshot").json()
    snapshot_id = created["reference"]["id"]
    simulator.image_md5(snapshot_id)  # hashed now, so the export ends at once
    assert signed_request(simulator, "POST", f"/snapshot/{snapshot_id}:export").ok
    url = signed_request(simulator, "GET", f"/snapshot/{snapshot_id}").json()["export"][
        "presigned-url"
    ]
    assert requests.head(url, timeout=10).status_code == 200

    deleting = signed_request(simulator, "DELETE", f"/instance/{WEB}").json()
    assert operation(simulator, deleting)["state"] == "success"
    assert signed_request(simulator, "GET", f"/instance/{WEB}").status_code == 404
    assert signed_request(simulator, "GET", f"/snapshot/{snapshot_id}").status_code == 404
    assert requests.get(url, timeout=10).status_code == 404


# -- templates ------------------------------------------------------------------------------


def test_register_template_reads_a_presigned_url_and_lives_in_its_zone(simulator, image):
    url, data, md5 = image
    started = signed_request(
        simulator,
        "POST",
        "/template",
        zone="de-fra-1",
        body=registration(
            url, md5.upper(), **{"boot-mode": "uefi", "default-user": "debian", "size": 10}
        ),
    ).json()
    assert started["state"] == "pending"
    simulator.wait_for_fetches()
    done = operation(simulator, started, zone="de-fra-1")
    assert done["state"] == "success"
    assert done["reference"]["command"] == "get-template"
    template_id = done["reference"]["id"]

    template = signed_request(simulator, "GET", f"/template/{template_id}", zone="de-fra-1").json()
    assert template["size"] == len(data)  # the bytes read, not the size asked for
    assert template["checksum"] == md5
    assert (template["boot-mode"], template["default-user"]) == ("uefi", "debian")
    assert (template["ssh-key-enabled"], template["password-enabled"]) == (True, False)
    assert (template["zones"], template["visibility"]) == (["de-fra-1"], "private")

    private = signed_request(simulator, "GET", "/template?visibility=private", zone="de-fra-1")
    assert [t["id"] for t in private.json()["templates"]] == [template_id]
    # Registered in de-fra-1: nowhere else.
    other = signed_request(simulator, "GET", "/template?visibility=private")
    assert other.json() == {"templates": []}
    assert signed_request(simulator, "GET", f"/template/{template_id}").status_code == 404


def test_checksum_mismatch_fails_naming_both_sums_but_not_the_url(simulator, image):
    url, data, md5 = image
    wrong = hashlib.md5(data + b"x").hexdigest()
    started = signed_request(simulator, "POST", "/template", body=registration(url, wrong)).json()
    simulator.wait_for_fetches()
    failed = operation(simulator, started)
    assert (failed["state"], failed["reason"]) == ("failure", "incorrect")
    message = failed["message"]
    assert f"checksum mismatch: expected {wrong}, got {md5}" in message
    assert str(len(data)) in message and "127.0.0.1" in message
    assert "X-Amz-Signature" not in message and urlsplit(url).path not in message
    private = signed_request(simulator, "GET", "/template?visibility=private").json()
    assert private == {"templates": []}


def test_a_url_its_server_refuses_fails_as_incorrect(simulator, moto_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    missing = s3.generate_presigned_url(
        "get_object", Params={"Bucket": s3_bucket, "Key": "no-such-object"}, ExpiresIn=600
    )
    started = signed_request(simulator, "POST", "/template", body=registration(missing, "0" * 32))
    simulator.wait_for_fetches()
    failed = operation(simulator, started.json())
    assert (failed["state"], failed["reason"]) == ("failure", "incorrect")
    assert failed["message"] == "cannot download the template from 127.0.0.1: HTTP 404"


def test_an_unreachable_url_fails_as_unavailable(simulator):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/image.qcow2?X-Amz-Signature=secret"
    started = signed_request(simulator, "POST", "/template", body=registration(url, "0" * 32))
    simulator.wait_for_fetches()
    failed = operation(simulator, started.json())
    assert (failed["state"], failed["reason"]) == ("failure", "unavailable")
    assert failed["message"] == (
        "cannot download the template from 127.0.0.1: cannot connect (Connection refused)"
    )


@pytest.mark.parametrize(
    ("fault", "reason", "message"),
    [
        (Faults(register_unreachable=1), "unavailable", "connection refused"),
        (Faults(register_mismatch=1), "incorrect", "checksum mismatch"),
    ],
)
def test_registration_faults_fail_the_next_registration_only(
    simulator, image, fault, reason, message
):
    url, _, md5 = image
    simulator.set_faults(fault)
    first = signed_request(simulator, "POST", "/template", body=registration(url, md5)).json()
    second = signed_request(simulator, "POST", "/template", body=registration(url, md5)).json()
    simulator.wait_for_fetches()
    failed, succeeded = operation(simulator, first), operation(simulator, second)
    assert (failed["state"], failed["reason"]) == ("failure", reason)
    assert message in failed["message"]
    assert succeeded["state"] == "success"


def test_slow_registration_stays_pending_for_its_seconds(clock, image):
    url, _, md5 = image
    sim = Simulator(key="EXOslow", secret="slow-secret", export_seconds=0, clock=clock)
    sim.set_faults(Faults(register_seconds=250))
    with sim.running():
        started = signed_request(sim, "POST", "/template", body=registration(url, md5)).json()
        sim.wait_for_fetches()
        clock.advance(249)
        assert operation(sim, started)["state"] == "pending"
        clock.advance(1)
        assert operation(sim, started)["state"] == "success"


def test_stuck_registration_stays_pending_until_the_fault_is_cleared(simulator, image):
    url, _, md5 = image
    simulator.set_faults(Faults(register_stuck=True))
    started = signed_request(simulator, "POST", "/template", body=registration(url, md5)).json()
    simulator.wait_for_fetches()
    assert operation(simulator, started)["state"] == "pending"
    simulator.set_faults(None)
    assert operation(simulator, started)["state"] == "success"


class StallingServer:
    """An HTTP server that promises a body, sends a little of it and then waits."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/image.qcow2"
        self.connected = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._socket.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
            self.connected.set()
            self._release.wait(60)

    def close(self) -> None:
        self._release.set()
        self._thread.join(10)
        self._socket.close()


class AnsweringServer:
    """An HTTP server that answers one request with a fixed status and no body."""

    def __init__(self, status: int) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/image.qcow2?sig=secret"
        self._status = status
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._socket.accept()
        with connection:
            connection.recv(65536)
            head = f"HTTP/1.1 {self._status} Whatever\r\nContent-Length: 0\r\n\r\n"
            connection.sendall(head.encode())

    def close(self) -> None:
        self._thread.join(10)
        self._socket.close()


@pytest.mark.parametrize(("status", "reason"), [(403, "incorrect"), (503, "unavailable")])
def test_an_error_status_of_the_url_fails_with_its_reason(simulator, status, reason):
    server = AnsweringServer(status)
    try:
        body = registration(server.url, "0" * 32)
        started = signed_request(simulator, "POST", "/template", body=body).json()
        simulator.wait_for_fetches()
    finally:
        server.close()
    failed = operation(simulator, started)
    assert (failed["state"], failed["reason"]) == ("failure", reason)
    assert failed["message"] == f"cannot download the template from 127.0.0.1: HTTP {status}"


def test_a_registration_in_flight_when_the_simulator_stops_ends_interrupted():
    stalling = StallingServer()
    sim = Simulator(key="EXOstop", secret="stop-secret", export_seconds=0)
    try:
        with sim.running():
            body = registration(stalling.url, "0" * 32)
            started = signed_request(sim, "POST", "/template", body=body).json()
            assert stalling.connected.wait(30)
        with sim.running():
            failed = operation(sim, started)
    finally:
        stalling.close()
    assert (failed["state"], failed["reason"]) == ("failure", "interrupted")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/image.qcow2", "file:///etc/passwd", "not a url at all"]
)
def test_register_template_refuses_a_url_that_is_not_http(simulator, url):
    refused = signed_request(simulator, "POST", "/template", body=registration(url, "0" * 32))
    assert refused.status_code == 400
    assert refused.json() == {"message": "url must be an HTTP or HTTPS URL"}


def test_list_templates_by_visibility_and_family(simulator):
    simulator.add_instance(WEB, boot_mode="legacy")
    public = signed_request(simulator, "GET", "/template").json()["templates"]
    assert [(t["visibility"], t["family"]) for t in public] == [("public", "ubuntu")]
    ubuntu = signed_request(simulator, "GET", "/template?visibility=public&family=ubuntu")
    assert ubuntu.json()["templates"] == public
    assert signed_request(simulator, "GET", "/template?family=debian").json() == {"templates": []}
    private = signed_request(simulator, "GET", "/template?visibility=private").json()
    assert [t["boot-mode"] for t in private["templates"]] == ["legacy"]
    bad = signed_request(simulator, "GET", "/template?visibility=everyone")
    assert bad.status_code == 400


def test_wait_for_fetches_gives_up_with_a_timeout():
    stalling = StallingServer()
    sim = Simulator(key="EXOwait", secret="wait-secret", export_seconds=0)
    try:
        with sim.running():
            body = registration(stalling.url, "0" * 32)
            signed_request(sim, "POST", "/template", body=body)
            assert stalling.connected.wait(30)
            with pytest.raises(TimeoutError, match="still being read"):
                sim.wait_for_fetches(timeout=0.2)
    finally:
        stalling.close()
