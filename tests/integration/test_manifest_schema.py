"""The manifest's JSON Schema, shipped with the package, says what the code writes and reads
(issue 10: a DR engineer can read an archive without our tool)."""

import json
from dataclasses import replace

import jsonschema
import pytest

from worker.errors import StoreIntegrityError
from worker.manifest import Manifest, SourceTemplate, schema
from worker.transfer import archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("segment_limit", [None, 12 * MiB], ids=["one-object", "segmented"])
async def test_every_manifest_written_validates_against_the_schema(
    exported, archive_store, small_transfer, bucket, segment_limit
):
    settings = replace(small_transfer, segment_limit=segment_limit or small_transfer.segment_limit)
    source = exported.add(33 * MiB + 9)
    result = await archive_export(source, archive_store, settings)

    document = json.loads(bucket.read(result.manifest_key))
    jsonschema.validate(document, schema(), format_checker=jsonschema.FormatChecker())
    jsonschema.Draft202012Validator.check_schema(schema())


def _valid() -> dict:
    folder = "snaparchive/exoscale/ch-gva-2/5a8e3f4c-3a9b-4c2d-8e1f-0a1b2c3d4e5f"
    return {
        "format": 1,
        "provider": "exoscale",
        "zone": "ch-gva-2",
        "snapshot_id": "5a8e3f4c-3a9b-4c2d-8e1f-0a1b2c3d4e5f",
        "snapshot_name": "db",
        "instance_id": None,
        "created_at": None,
        "size": 10,
        "md5": "0" * 32,
        "part_size": 5,
        "segments": [{"key": f"{folder}/image", "size": 10, "etag": "x-2", "offset": 0}],
        "tool_version": "0.1.0",
        "archived_at": "2026-12-01T00:00:00+00:00",
    }


KEY = "snaparchive/exoscale/ch-gva-2/5a8e3f4c-3a9b-4c2d-8e1f-0a1b2c3d4e5f/manifest.json"


def _spoiled(change):
    document = _valid()
    change(document)
    return document


@pytest.mark.parametrize(
    "document",
    [
        _spoiled(lambda d: d.update(format=2)),
        _spoiled(lambda d: d.update(md5="ABC")),
        _spoiled(lambda d: d.update(segments=[])),
        _spoiled(lambda d: d.pop("size")),
        _spoiled(lambda d: d.update(extra=1)),
        _spoiled(lambda d: d["segments"][0].update(key="elsewhere/file")),
        _spoiled(lambda d: d["segments"][0].update(size=0)),
    ],
    ids=["format", "md5", "no-segments", "no-size", "unknown-field", "foreign-key", "empty"],
)
def test_schema_and_reader_refuse_the_same_documents(document):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema())
    with pytest.raises(StoreIntegrityError):
        Manifest.from_json(json.dumps(document).encode(), KEY)


def test_schema_and_reader_accept_a_valid_document():
    jsonschema.validate(_valid(), schema())
    assert Manifest.from_json(json.dumps(_valid()).encode(), KEY).size == 10


async def test_policy_and_source_template_are_recorded_and_read_back(
    exported, archive_store, small_transfer, bucket
):
    template = SourceTemplate(
        "uefi", ssh_key_enabled=True, password_enabled=False, default_user="debian"
    )
    source = replace(exported.add(6 * MiB), policy="web", template=template)
    result = await archive_export(source, archive_store, small_transfer)

    jsonschema.validate(json.loads(bucket.read(result.manifest_key)), schema())
    manifest = await archive_store.read_manifest(result.manifest_key)
    assert (manifest.format, manifest.policy, manifest.template) == (2, "web", template)


def test_a_format_1_manifest_is_still_read():
    document = _valid()
    assert document["format"] == 1
    manifest = Manifest.from_json(json.dumps(document).encode(), KEY)
    assert (manifest.policy, manifest.template) == (None, None)
