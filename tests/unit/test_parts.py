"""Cutting an image into segments and parts."""

import pytest

from worker.errors import ConfigError
from worker.parts import MAX_PARTS, MIN_PART_SIZE, PartPlan, buffer_count, plan_parts
from worker.settings import TransferSettings
from worker.units import GiB, MiB, TiB


def test_defaults_fit_five_buffers_in_256_mib():
    settings = TransferSettings()
    plan = plan_parts(10 * GiB, settings)
    assert plan.part_size == 51 * MiB
    assert buffer_count(plan.part_size, settings) * plan.part_size <= settings.memory_limit
    assert plan.segment_count == 1
    assert plan.part_count == -(-10 * GiB // (51 * MiB))


def test_fifty_tib_becomes_segments_of_at_most_10000_parts():
    settings = TransferSettings()
    plan = plan_parts(50 * TiB, settings)
    spans = plan.segments()
    assert all(span.parts <= MAX_PARTS and span.size <= settings.segment_limit for span in spans)
    assert sum(span.size for span in spans) == 50 * TiB
    assert spans[-1].offset + spans[-1].size == 50 * TiB


def test_segment_limit_caps_objects_and_is_a_multiple_of_the_part_size():
    settings = TransferSettings(part_size=5 * MiB, segment_limit=12 * MiB, memory_limit=64 * MiB)
    plan = plan_parts(23 * MiB, settings)
    assert plan.segment_size == 10 * MiB
    assert [(s.offset, s.size, s.parts) for s in plan.segments()] == [
        (0, 10 * MiB, 2),
        (10 * MiB, 10 * MiB, 2),
        (20 * MiB, 3 * MiB, 1),
    ]
    parts = list(plan.parts())
    assert [(p.index, p.segment, p.number, p.size) for p in parts] == [
        (0, 0, 1, 5 * MiB),
        (1, 0, 2, 5 * MiB),
        (2, 1, 1, 5 * MiB),
        (3, 1, 2, 5 * MiB),
        (4, 2, 1, 3 * MiB),
    ]
    assert [p.offset for p in plan.parts(10 * MiB)] == [10 * MiB, 15 * MiB, 20 * MiB]


def test_parts_from_a_non_boundary_is_refused():
    plan = PartPlan(20 * MiB, 5 * MiB, 10 * MiB)
    with pytest.raises(ValueError, match="not a part boundary"):
        next(plan.parts(7))


def test_small_memory_lowers_the_default_part_size_but_not_below_5_mib():
    assert plan_parts(GiB, TransferSettings(memory_limit=20 * MiB)).part_size == MIN_PART_SIZE
    settings = TransferSettings(memory_limit=60 * MiB, upload_concurrency=2)
    assert plan_parts(GiB, settings).part_size == 20 * MiB
    assert buffer_count(20 * MiB, settings) == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (TransferSettings(part_size=MiB), "SNAPARCHIVE_PART_SIZE"),
        (TransferSettings(part_size=6 * GiB), "SNAPARCHIVE_PART_SIZE"),
        (TransferSettings(part_size=64 * MiB, memory_limit=32 * MiB), "SNAPARCHIVE_MEMORY_LIMIT"),
        (TransferSettings(part_size=8 * MiB, segment_limit=MiB), "SNAPARCHIVE_SEGMENT_LIMIT"),
    ],
)
def test_impossible_settings_name_the_variable(settings, message):
    with pytest.raises(ConfigError, match=message):
        plan_parts(GiB, settings)


def test_plan_round_trips_through_a_dict():
    plan = plan_parts(3 * GiB, TransferSettings())
    assert PartPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="inconsistent"):
        PartPlan.from_dict({"total": 10, "part_size": 4, "segment_size": 6})


def test_part_by_index_matches_the_iteration():
    plan = PartPlan(50 * MiB + 7, 5 * MiB, 15 * MiB)
    assert [plan.part(i) for i in range(plan.part_count)] == list(plan.parts())
    assert plan.part(10).size == 7 and plan.part(10).number == 2 and plan.part(10).segment == 3
