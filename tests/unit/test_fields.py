"""worker.fields: ids that are empty and sizes no disk has are malformed; one message shape."""

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.errors import BadResponse
from worker.fields import MAX_SIZE, Fields, items_of
from worker.models import Instance, Operation, Quota, Snapshot, Template, Zone
from worker.units import GiB


def fields(**data):
    return Fields("acme", data, "snapshot 1")


def test_text_must_be_a_non_empty_string():
    assert fields(id="s-1").text("id") == "s-1"
    with pytest.raises(BadResponse, match=r"^acme: snapshot 1 has an empty 'id'$"):
        fields(id="").text("id")
    with pytest.raises(BadResponse, match=r"^acme: snapshot 1 has no 'id'$"):
        fields().text("id")
    with pytest.raises(BadResponse, match=r"^acme: snapshot 1 has 'id' of type an integer$"):
        fields(id=7).text("id")


@pytest.mark.parametrize(
    ("value", "unit", "size"),
    [
        (None, GiB, None),
        (0, GiB, 0),
        (20, GiB, 20 * GiB),
        (12345, 1, 12345),
        (MAX_SIZE, 1, MAX_SIZE),
    ],
)
def test_size_in_bytes(value, unit, size):
    assert fields(size=value).size("size", unit) == size


@pytest.mark.parametrize(
    ("value", "unit", "problem"),
    [
        (-1, GiB, "has a negative 'size'"),
        (MAX_SIZE // GiB + 1, GiB, "has 'size' out of range"),
        (10**400, 1, "has 'size' out of range"),
        (2.5, GiB, "has 'size' of type a float"),
        (True, GiB, "has 'size' of type a boolean"),
        ("20", GiB, "has 'size' of type a string"),
    ],
)
def test_size_refuses_what_no_disk_is(value, unit, problem):
    with pytest.raises(BadResponse, match=f"^acme: snapshot 1 {problem}$"):
        fields(size=value).size("size", unit)


def test_fields_name_the_provider_and_the_object() -> None:
    fields = Fields("gcore", {"id": "a", "size": True, "n": None}, "snapshot 2")
    assert fields.required("id", str) == "a"
    assert fields.optional("n", int) is None
    assert fields.optional("missing", int) is None
    with pytest.raises(BadResponse, match=r"^gcore: snapshot 2 has no 'n'$"):
        fields.required("n", int)
    with pytest.raises(BadResponse, match=r"^gcore: snapshot 2 has 'size' of type a boolean$"):
        fields.optional("size", int)  # JSON true is not a size
    with pytest.raises(BadResponse, match=r"^instavm: snapshot 1 is a list, not an object$"):
        Fields("instavm", [], "snapshot 1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-05-29T05:32:41+0000", datetime(2019, 5, 29, 5, 32, 41, tzinfo=UTC)),
        ("2020-04-06T10:47:46.786Z", datetime(2020, 4, 6, 10, 47, 46, 786000, tzinfo=UTC)),
        ("2024-01-01T00:00:00", datetime(2024, 1, 1, tzinfo=UTC)),
        (
            "2024-01-01T02:00:00+02:00",
            datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_timestamps_are_timezone_aware(text: str, expected: datetime) -> None:
    assert Fields("p", {"at": text}, "x").timestamp("at") == expected


def test_items_of() -> None:
    assert items_of("p", {"k": [1]}, "k", "page") == [1]
    assert items_of("p", [2], None, "page") == [2]
    with pytest.raises(BadResponse, match=r"^p: page's 'k' is null, not a list$"):
        items_of("p", {}, "k", "page")
    with pytest.raises(BadResponse, match=r"^p: page is a string, not an object$"):
        items_of("p", "<html>", "k", "page")


def test_lenient_fields_leave_a_wrong_type_out():
    fields = Fields("p", {"name": 5, "size": True, "note": "ok"}, "snapshot 1")
    assert fields.lenient("name", str) is None
    assert fields.lenient("size", int) is None  # JSON true is no size, even read leniently
    assert fields.lenient("note", str) == "ok"
    assert fields.lenient("missing", str) is None


def test_lists_maps_and_child_objects():
    fields = Fields("p", {"zones": ["a", "b"], "labels": {"k": "v"}, "t": {"id": 7}}, "x 1")
    assert fields.strings("zones") == ("a", "b")
    assert fields.strings("missing") == () and fields.labels("missing") == {}
    assert fields.labels() == {"k": "v"}
    child = fields.child("t")
    assert child is not None and fields.child("missing") is None
    with pytest.raises(BadResponse, match=r"^p: x 1's 't' has 'id' of type an integer$"):
        child.required("id", str)
    bad = Fields("p", {"zones": ["a", 1], "labels": {"k": 1}, "t": "x"}, "x 1")
    with pytest.raises(BadResponse, match=r"^p: x 1 has 'zones' that is not a list of strings$"):
        bad.strings("zones")
    with pytest.raises(BadResponse, match=r"^p: x 1 has 'labels' that are not a map of strings$"):
        bad.labels()
    with pytest.raises(BadResponse, match=r"^p: x 1 has 't' of type a string$"):
        bad.child("t")


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (Template, {"id": "t", "size": True}, "template t has 'size' of type a boolean"),
        (Template, {"id": "t", "zones": "de-fra-1"}, "template t has 'zones' of type a string"),
        (Instance, {"name": "vm"}, "instance has no 'id'"),
        (Instance, {"id": "i", "labels": ["b"]}, "instance i has 'labels' of type a list"),
        (Snapshot, [], "snapshot is a list, not an object"),
        (Snapshot, {"id": "s", "state": 3}, "snapshot s has 'state' of type an integer"),
        (Operation, {"id": "o"}, "operation o has no 'state'"),
        (Zone, {"name": None}, "zone has no 'name'"),
    ],
)
def test_the_exoscale_models_read_through_fields_with_the_same_messages(model, data, message):
    with pytest.raises(BadResponse, match=f"^exoscale: {re.escape(message)}$"):
        model.from_api(data)


def test_a_quota_is_whole_numbers_not_booleans():
    with pytest.raises(BadResponse, match=r"^exoscale: quota snapshot has 'usage' of type a bo"):
        Quota.from_api({"usage": True, "limit": 5}, "snapshot")
    assert Quota.from_api({"usage": 3, "limit": -1}, "snapshot").unlimited


def test_a_snapshot_reads_what_a_job_can_do_without_leniently():
    snapshot = Snapshot.from_api({"id": "s", "state": "ready", "name": 5, "size": True})
    assert (snapshot.name, snapshot.size_gib, snapshot.instance_id) == ("", 0, None)
