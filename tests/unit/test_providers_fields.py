"""Fields.text and Fields.size: ids that are empty and sizes no disk has are malformed."""

import pytest

from worker.errors import BadResponse
from worker.providers.base import MAX_SIZE, Fields
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
