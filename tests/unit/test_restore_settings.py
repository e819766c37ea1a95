"""Issue 12's settings and the cut of a segmented archive into copy parts (worker/join.py)."""

from __future__ import annotations

import itertools

import pytest

from worker.errors import ConfigError
from worker.join import JoinRefused, JoinState, plan_join
from worker.manifest import ArchivedObject
from worker.parts import MAX_PARTS, MIN_PART_SIZE
from worker.settings import load
from worker.units import GiB, MiB, TiB


def test_restore_settings_have_defaults_and_name_their_variable() -> None:
    settings = load({})
    assert (settings.restore_url_ttl, settings.restore_timeout) == (12 * 3600, 2 * 3600)
    assert settings.s3.object_limit == 4 * TiB
    settings = load(
        {"SNAPARCHIVE_RESTORE_URL_TTL": "600", "SNAPARCHIVE_RESTORE_TIMEOUT": "60",
         "SNAPARCHIVE_OBJECT_LIMIT": "5TiB"}
    )  # fmt: skip
    assert (settings.restore_url_ttl, settings.restore_timeout) == (600, 60)
    assert settings.s3.object_limit == 5 * TiB
    for name, value in [
        ("SNAPARCHIVE_RESTORE_URL_TTL", str(7 * 24 * 3600 + 1)),
        ("SNAPARCHIVE_RESTORE_URL_TTL", "0"),
        ("SNAPARCHIVE_RESTORE_TIMEOUT", "soon"),
        ("SNAPARCHIVE_OBJECT_LIMIT", "big"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load({name: value})


def objects(*sizes: int) -> list[ArchivedObject]:
    found, offset = [], 0
    for n, size in enumerate(sizes):
        found.append(ArchivedObject(f"a/image.seg{n:05d}", size, "etag", offset))
        offset += size
    return found


def test_copy_parts_cover_every_segment_in_order_within_s3_s_bounds() -> None:
    segments = objects(12 * MiB, 12 * MiB, 3 * MiB)
    parts = plan_join(segments, 4 * TiB)
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    # Each segment is covered exactly, in order; no part straddles two segments.
    for obj in segments:
        mine = [p for p in parts if p.key == obj.key]
        assert mine[0].start == 0 and mine[-1].end == obj.size
        assert all(a.end == b.start for a, b in itertools.pairwise(mine))
    # Only the very last part may be below 5 MiB (a segment's short tail joins its part).
    assert all(p.size >= MIN_PART_SIZE for p in parts[:-1])
    assert [p.size for p in parts] == [5 * MiB, 7 * MiB, 5 * MiB, 7 * MiB, 3 * MiB]


def test_a_huge_image_keeps_to_10000_parts() -> None:
    segments = objects(*([TiB] * 4), 3 * GiB)
    parts = plan_join(segments, 5 * TiB)
    assert len(parts) <= MAX_PARTS
    assert sum(p.size for p in parts) == 4 * TiB + 3 * GiB


def test_an_image_bigger_than_one_object_or_with_tiny_segments_is_refused() -> None:
    with pytest.raises(JoinRefused, match="SNAPARCHIVE_OBJECT_LIMIT"):
        plan_join(objects(3 * TiB, 2 * TiB), 4 * TiB)
    with pytest.raises(JoinRefused, match="below S3's 5 MiB part minimum"):
        plan_join(objects(MiB, MiB), 4 * TiB)


def test_a_join_state_reads_back_and_refuses_garbage() -> None:
    state = JoinState("k", "upload", {1: "e1", 2: "e2"}, completed=False)
    assert JoinState.from_dict(state.to_dict()) == state
    for bad in ({}, {"key": 3, "etags": {}}, {"key": "k", "etags": {"x": "e"}}):
        with pytest.raises(ValueError):
            JoinState.from_dict(bad)
