"""The common record and the status normalisation every adapter relies on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.providers import exoscale, gcore, genesiscloud, instavm
from worker.providers.base import STATUSES, SnapshotRecord, normalise_status
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
