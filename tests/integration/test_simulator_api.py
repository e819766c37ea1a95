"""The simulator's API over real HTTP: routing, signatures, the state machine and API faults."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.fixtures.simulator import ManualClock, signed_request
from worker.simulator import Faults, Simulator
from worker.units import MiB

pytestmark = pytest.mark.integration

SNAPSHOT = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
OTHER = "0b7e5d3c-2a19-4f08-8e6d-5c4b3a291807"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def slow_sim(clock):
    """A simulator whose operations take 5 s of its manual clock."""
    sim = Simulator(key="EXOslow", secret="slow-secret", export_seconds=5, clock=clock)
    sim.add_snapshot(SNAPSHOT, 2 * MiB)
    with sim.running():
        yield sim


def wait_for_md5(sim: Simulator, snapshot_id: str) -> None:
    # Operations also wait for the export's MD5; computing it here (cached) removes the race.
    sim.image_md5(snapshot_id)


def test_unknown_zone_and_path_answer_404_json(simulator):
    response = requests.get(f"{simulator.url}/xx-nowhere-1/v2/snapshot", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"message": "unknown zone: xx-nowhere-1"}

    response = signed_request(simulator, "GET", "/nothing-here")
    assert response.status_code == 404
    assert "message" in response.json()

    response = signed_request(simulator, "PUT", "/snapshot")
    assert response.status_code == 405
    assert "message" in response.json()


def test_unknown_ids_answer_404_with_a_message(simulator):
    for path in (f"/snapshot/{SNAPSHOT}", f"/operation/{SNAPSHOT}", f"/instance/{SNAPSHOT}"):
        response = signed_request(simulator, "GET", path)
        assert response.status_code == 404, path
        assert SNAPSHOT in response.json()["message"]


def test_snapshots_live_in_their_zone(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB, zone="de-fra-1")
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}", zone="de-fra-1").ok
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").status_code == 404
    assert signed_request(simulator, "GET", "/snapshot").json() == {"snapshots": []}


@pytest.mark.parametrize(
    ("secret", "expired_since", "message"),
    [
        ("wrong-secret", None, "Invalid request signature"),
        (None, 5, "request expired"),
    ],
)
def test_bad_signatures_are_refused_with_403(simulator, secret, expired_since, message):
    # Computed here, not in the parameters: test ids must not change with the clock (every
    # pytest-xdist worker collects them and they must agree).
    expires = None if expired_since is None else int(time.time()) - expired_since
    response = signed_request(simulator, "GET", "/snapshot", secret=secret, expires=expires)
    assert response.status_code == 403
    assert response.json() == {"message": message}


def test_unsigned_requests_are_refused_except_list_zones(simulator):
    response = requests.get(f"{simulator.url}/ch-gva-2/v2/snapshot", timeout=10)
    assert response.status_code == 403
    assert "Authorization" in response.json()["message"]

    zones = requests.get(f"{simulator.url}/ch-gva-2/v2/zone", timeout=10)
    assert zones.ok
    names = [zone["name"] for zone in zones.json()["zones"]]
    assert "ch-gva-2" in names and "de-fra-1" in names


def test_signature_covers_body_and_query(simulator):
    # A body or a query that differs from the signed one breaks the signature.
    good = signed_request(simulator, "GET", "/snapshot?visibility=private")
    assert good.ok
    header = good.request.headers["Authorization"]
    tampered = requests.get(
        f"{simulator.url}/ch-gva-2/v2/snapshot?visibility=public",
        headers={"Authorization": header},
        timeout=10,
    )
    assert tampered.status_code == 403


def test_export_goes_pending_then_success_and_publishes_the_file(slow_sim, clock):
    operation = signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    assert operation["state"] == "pending"
    assert operation["reference"] == {
        "id": SNAPSHOT,
        "link": f"/v2/snapshot/{SNAPSHOT}",
        "command": "get-snapshot",
    }
    snapshot = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()
    assert snapshot["state"] == "exporting"
    assert "export" not in snapshot
    wait_for_md5(slow_sim, SNAPSHOT)
    assert signed_request(slow_sim, "GET", f"/operation/{operation['id']}").json()["state"] == (
        "pending"
    )

    clock.advance(5)
    done = signed_request(slow_sim, "GET", f"/operation/{operation['id']}").json()
    assert done["state"] == "success"
    snapshot = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()
    assert snapshot["state"] == "exported"
    assert snapshot["export"]["md5sum"] == slow_sim.image_md5(SNAPSHOT)
    assert urlsplit(snapshot["export"]["presigned-url"]).path.endswith(f"/{SNAPSHOT}")


def test_get_snapshot_hands_out_a_fresh_url_each_time(slow_sim, clock):
    signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export")
    wait_for_md5(slow_sim, SNAPSHOT)
    clock.advance(5)
    first = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()["export"]
    clock.advance(60)
    listed = signed_request(slow_sim, "GET", "/snapshot").json()["snapshots"][0]["export"]
    for url in (first["presigned-url"], listed["presigned-url"]):
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
    first_date = parse_qs(urlsplit(first["presigned-url"]).query)["X-Amz-Date"]
    later_date = parse_qs(urlsplit(listed["presigned-url"]).query)["X-Amz-Date"]
    assert first_date != later_date
    # The file is the same: same path, same MD5.
    assert urlsplit(first["presigned-url"]).path == urlsplit(listed["presigned-url"]).path
    assert first["md5sum"] == listed["md5sum"]


def test_second_export_is_accepted_and_keeps_the_file(slow_sim, clock):
    first = signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    wait_for_md5(slow_sim, SNAPSHOT)
    clock.advance(5)
    before = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()

    second = signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export")
    assert second.ok
    assert second.json()["id"] != first["id"]
    during = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()
    assert during["state"] == "exported"
    clock.advance(5)
    assert signed_request(slow_sim, "GET", f"/operation/{second.json()['id']}").json()["state"] == (
        "success"
    )
    after = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()
    assert after["export"]["md5sum"] == before["export"]["md5sum"]
    assert (
        urlsplit(after["export"]["presigned-url"]).path
        == urlsplit(before["export"]["presigned-url"]).path
    )


def test_export_while_exporting_is_a_conflict(slow_sim):
    assert signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export").ok
    response = signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export")
    assert response.status_code == 409
    assert "exporting" in response.json()["message"]


def test_api_error_burst_then_recovery(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    simulator.set_faults(Faults(api_errors=2))
    statuses = [signed_request(simulator, "GET", "/snapshot").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_custom_error_status(simulator):
    simulator.set_faults(Faults(api_errors=1, api_error_status=500))
    response = signed_request(simulator, "GET", "/snapshot")
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


def test_rate_limit_carries_retry_after(simulator):
    simulator.set_faults(Faults(rate_limits=1, retry_after=7))
    limited = signed_request(simulator, "GET", "/snapshot")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert "message" in limited.json()
    assert signed_request(simulator, "GET", "/snapshot").ok


def test_snapshot_faults_apply_to_that_snapshot_and_its_operations_only(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    simulator.add_snapshot(OTHER, MiB)
    simulator.set_faults(Faults(api_errors=1), snapshot_id=SNAPSHOT)
    assert signed_request(simulator, "GET", "/snapshot").ok
    assert signed_request(simulator, "GET", f"/snapshot/{OTHER}").ok
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").status_code == 503
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").ok

    operation = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    simulator.set_faults(Faults(rate_limits=1), snapshot_id=SNAPSHOT)
    assert signed_request(simulator, "GET", f"/operation/{operation['id']}").status_code == 429


def test_failing_export_reports_its_reason_and_can_be_retried(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    simulator.set_faults(Faults(export_failures=1, failure_reason="busy"), snapshot_id=SNAPSHOT)
    wait_for_md5(simulator, SNAPSHOT)
    failed = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    result = signed_request(simulator, "GET", f"/operation/{failed['id']}").json()
    assert result["state"] == "failure"
    assert result["reason"] == "busy"
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").json()["state"] == "ready"

    retried = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    assert signed_request(simulator, "GET", f"/operation/{retried['id']}").json()["state"] == (
        "success"
    )


def test_stuck_export_stays_pending_until_the_fault_is_cleared(slow_sim, clock):
    slow_sim.set_faults(Faults(export_stuck=True))
    operation = signed_request(slow_sim, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    wait_for_md5(slow_sim, SNAPSHOT)
    clock.advance(500)
    path = f"/operation/{operation['id']}"
    assert signed_request(slow_sim, "GET", path).json()["state"] == "pending"
    slow_sim.set_faults(None)
    assert signed_request(slow_sim, "GET", path).json()["state"] == "success"


def test_wrong_md5_is_published(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB, state="exported")
    simulator.set_faults(Faults(wrong_md5=True), snapshot_id=SNAPSHOT)
    published = signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").json()["export"]
    assert published["md5sum"] != simulator.image_md5(SNAPSHOT)
    assert len(published["md5sum"]) == 32


def test_delete_removes_the_snapshot(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    operation = signed_request(simulator, "DELETE", f"/snapshot/{SNAPSHOT}").json()
    assert signed_request(simulator, "GET", f"/operation/{operation['id']}").json()["state"] == (
        "success"
    )
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").status_code == 404


def test_create_snapshot_of_an_instance(slow_sim, clock):
    instance_id = signed_request(slow_sim, "GET", f"/snapshot/{SNAPSHOT}").json()["instance"]["id"]
    operation = signed_request(slow_sim, "POST", f"/instance/{instance_id}:create-snapshot").json()
    new_id = operation["reference"]["id"]
    assert new_id != SNAPSHOT
    assert signed_request(slow_sim, "GET", f"/snapshot/{new_id}").json()["state"] == (
        "snapshotting"
    )
    clock.advance(5)
    snapshot = signed_request(slow_sim, "GET", f"/snapshot/{new_id}").json()
    assert snapshot["state"] == "ready"
    assert snapshot["instance"]["id"] == instance_id
    instance = signed_request(slow_sim, "GET", f"/instance/{instance_id}").json()
    assert {"id": new_id} in instance["snapshots"]


def test_promote_creates_a_private_template(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    bad = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:promote", body={})
    assert bad.status_code == 400
    assert "name" in bad.json()["message"]

    operation = signed_request(
        simulator, "POST", f"/snapshot/{SNAPSHOT}:promote", body={"name": "golden"}
    ).json()
    wait_for_md5(simulator, SNAPSHOT)
    done = signed_request(simulator, "GET", f"/operation/{operation['id']}").json()
    assert done["reference"]["command"] == "get-template"
    template = signed_request(simulator, "GET", f"/template/{done['reference']['id']}").json()
    assert template["name"] == "golden"
    assert template["visibility"] == "private"
    assert template["checksum"] == simulator.image_md5(SNAPSHOT)


def test_register_template_from_an_export_checks_the_checksum(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB, state="exported")
    export = signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").json()["export"]
    body = {
        "name": "restored",
        "url": export["presigned-url"],
        "ssh-key-enabled": True,
        "password-enabled": False,
        "boot-mode": "uefi",
    }
    wrong = signed_request(simulator, "POST", "/template", body={**body, "checksum": "0" * 32})
    right = signed_request(
        simulator, "POST", "/template", body={**body, "checksum": export["md5sum"]}
    )
    simulator.wait_for_fetches()  # the simulator reads the URL, as Exoscale does
    wrong_result = signed_request(simulator, "GET", f"/operation/{wrong.json()['id']}").json()
    right_result = signed_request(simulator, "GET", f"/operation/{right.json()['id']}").json()
    assert (wrong_result["state"], wrong_result["reason"]) == ("failure", "incorrect")
    assert right_result["state"] == "success"
    template = signed_request(
        simulator, "GET", f"/template/{right_result['reference']['id']}"
    ).json()
    assert template["size"] == MiB
    assert template["boot-mode"] == "uefi"

    missing = signed_request(simulator, "POST", "/template", body={"name": "x"})
    assert missing.status_code == 400


def test_control_endpoint_sets_and_shows_faults(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    response = requests.put(
        f"{simulator.url}/_simulator/faults",
        json={"faults": {"api-errors": 1}, "snapshot_id": SNAPSHOT},
        timeout=10,
    )
    assert response.ok
    assert response.json()["snapshots"][SNAPSHOT]["api_errors"] == 1
    assert signed_request(simulator, "GET", f"/snapshot/{SNAPSHOT}").status_code == 503

    bad = requests.put(
        f"{simulator.url}/_simulator/faults", json={"faults": {"no_such_fault": 1}}, timeout=10
    )
    assert bad.status_code == 400
    assert "no_such_fault" in bad.json()["message"]
    shown = requests.get(f"{simulator.url}/_simulator/faults", timeout=10).json()
    assert shown["global"] is None


def test_new_ids_are_uuids(simulator):
    simulator.add_snapshot(SNAPSHOT, MiB)
    operation = signed_request(simulator, "POST", f"/snapshot/{SNAPSHOT}:export").json()
    assert str(uuid.UUID(operation["id"])) == operation["id"]
