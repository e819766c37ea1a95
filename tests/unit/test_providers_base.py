"""The common record, status normalisation and field checks every adapter relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.errors import BadResponse
from worker.providers import exoscale, gcore, genesiscloud, instavm
from worker.providers.base import STATUSES, Fields, SnapshotRecord, items_of, normalise_status
from worker.providers.inventory import PROVIDERS


@pytest.mark.parametrize("module", [exoscale, gcore, genesiscloud, instavm])
def test_every_status_map_lands_in_the_common_set(module) -> None:
    assert set(module.STATUS_MAP.values()) <= set(STATUSES)
    assert all(word == word.lower() for word in module.STATUS_MAP)


@pytest.mark.parametrize(
    ("raw", "mapping", "common"),
    [
        ("exported", exoscale.STATUS_MAP, "ready"),
        ("snapshotting", exoscale.STATUS_MAP, "creating"),
        ("exporting", exoscale.STATUS_MAP, "exporting"),
        ("created", genesiscloud.STATUS_MAP, "ready"),
        ("pending_delete", genesiscloud.STATUS_MAP, "deleting"),
        ("available", gcore.STATUS_MAP, "ready"),
        ("error_deleting", gcore.STATUS_MAP, "error"),
        ("FAILED", instavm.STATUS_MAP, "error"),
        ("restoring", gcore.STATUS_MAP, "other"),
        (None, gcore.STATUS_MAP, "other"),
    ],
)
def test_normalise_status(raw, mapping, common) -> None:
    assert normalise_status(raw, mapping) == common


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


def test_record_json_and_archive_key() -> None:
    record = SnapshotRecord(
        provider="gcore",
        region="7",
        id="s1",
        name="n",
        status="ready",
        raw_status="available",
        size_bytes=20 << 30,
        source_id="v1",
        created_at=datetime(2019, 5, 29, tzinfo=UTC),
        raw={"id": "s1"},
    )
    assert record.archive_key == ("gcore", "7", "s1")
    assert record.to_json(None) == {
        "provider": "gcore",
        "region": "7",
        "id": "s1",
        "name": "n",
        "status": "ready",
        "raw_status": "available",
        "size_bytes": 20 << 30,
        "source_id": "v1",
        "created_at": "2019-05-29T00:00:00+00:00",
        "archived": None,
        "raw": {"id": "s1"},
    }


def test_provider_names_and_credentials() -> None:
    assert {name: cls.credential for name, cls in PROVIDERS.items()} == {
        "exoscale": "EXOSCALE_API_KEY",
        "genesiscloud": "GENESISCLOUD_TOKEN",
        "gcore": "GCORE_API_KEY",
        "instavm": "INSTAVM_API_KEY",
    }
