"""How an image of a known size is cut into archive objects (segments) and multipart parts.

Parts are numbered through the whole image (``index`` 0, 1, ...) and every
segment holds a whole number of parts, so a part never straddles two objects.
Within its segment a part has the S3 part number ``number`` (1-based). All parts
are ``part_size`` bytes except the image's last one.

The rules, for an image of ``total`` bytes and :class:`~worker.settings.TransferSettings`:

- ``part_size``: the setting if given (5 MiB to 5 GiB), else 64 MiB, lowered so that
  ``upload_concurrency + 1`` part buffers fit in ``memory_limit`` (one filling while the
  others upload), never below the 5 MiB S3 minimum.
- ``segment_size``: the largest multiple of ``part_size`` that is at most
  ``segment_limit`` (itself at most 5 TiB, S3's largest object) and at most 10,000
  parts. Images above it become several segments, so a 50 TiB image needs no more
  memory than a 10 GiB one.
- ``buffers``: part buffers in flight, ``min(upload_concurrency + 1, memory_limit //
  part_size)``, so ``buffers * part_size <= memory_limit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.errors import ConfigError
from worker.settings import TransferSettings
from worker.units import GiB, MiB, TiB, format_size

MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: S3's largest object: a bigger ``SNAPARCHIVE_SEGMENT_LIMIT`` would fail at the store.
MAX_OBJECT_SIZE = 5 * TiB
DEFAULT_PART_SIZE = 64 * MiB


@dataclass(frozen=True)
class Part:
    """One multipart part.

    Parameters:
      index: Position among all parts of the image, from 0.
      segment: Index of the segment (archive object) holding it, from 0.
      number: S3 part number within its segment, from 1.
      offset: Offset of its first byte in the image.
      size: Its length in bytes.
    """

    index: int
    segment: int
    number: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        """Offset just past its last byte."""
        return self.offset + self.size


@dataclass(frozen=True)
class SegmentSpan:
    """Where one archive object lies in the image: ``offset``, ``size``, ``parts`` (count)."""

    index: int
    offset: int
    size: int
    parts: int


@dataclass(frozen=True)
class PartPlan:
    """The cut of an image of ``total`` bytes into segments of ``segment_size`` bytes and
    parts of ``part_size`` bytes (see the module docstring for how they are chosen).

    ``segment_size`` is a multiple of ``part_size``, so part ``i`` always starts at
    ``i * part_size`` and only the image's last part is short.
    """

    total: int
    part_size: int
    segment_size: int

    @property
    def parts_per_segment(self) -> int:
        return self.segment_size // self.part_size

    @property
    def segment_count(self) -> int:
        return -(-self.total // self.segment_size)

    @property
    def part_count(self) -> int:
        return -(-self.total // self.part_size)

    def segment(self, index: int) -> SegmentSpan:
        """Return segment ``index`` (from 0)."""
        offset = index * self.segment_size
        size = min(self.segment_size, self.total - offset)
        return SegmentSpan(index, offset, size, -(-size // self.part_size))

    def segments(self) -> list[SegmentSpan]:
        """Return every segment in order."""
        return [self.segment(index) for index in range(self.segment_count)]

    def part(self, index: int) -> Part:
        """Return part ``index`` (from 0, through the whole image)."""
        segment, within = divmod(index, self.parts_per_segment)
        offset = index * self.part_size
        return Part(index, segment, within + 1, offset, min(self.part_size, self.total - offset))

    def parts(self, start: int = 0) -> Iterator[Part]:
        """Yield the parts in image order, from the one beginning at offset ``start``.

        Raises:
          ValueError: When ``start`` is not a part boundary.
        """
        if start % self.part_size and start != self.total:
            raise ValueError(f"offset {start} is not a part boundary")
        for index in range(-(-start // self.part_size), self.part_count):
            yield self.part(index)

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "part_size": self.part_size, "segment_size": self.segment_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartPlan:
        """Rebuild a plan from :meth:`to_dict` output (raises ValueError when inconsistent)."""
        plan = cls(int(data["total"]), int(data["part_size"]), int(data["segment_size"]))
        if plan.total < 0 or plan.part_size <= 0 or plan.segment_size % plan.part_size:
            raise ValueError(f"inconsistent part plan {data!r}")
        return plan


def part_size_for(settings: TransferSettings) -> int:
    """Return the part size the ``settings`` ask for (see the module docstring).

    Raises:
      ConfigError: When the configured part size is outside 5 MiB-5 GiB or one part
        does not fit in the memory limit.
    """
    if settings.part_size is not None:
        size = settings.part_size
        if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
            raise ConfigError(
                f"SNAPARCHIVE_PART_SIZE: must be within 5 MiB and 5 GiB, not {format_size(size)}"
            )
    else:
        fitting = settings.memory_limit // (settings.upload_concurrency + 1) // MiB * MiB
        size = max(MIN_PART_SIZE, min(DEFAULT_PART_SIZE, fitting))
    if size > settings.memory_limit:
        raise ConfigError(
            f"SNAPARCHIVE_MEMORY_LIMIT: {format_size(settings.memory_limit)} does not hold "
            f"one part of {format_size(size)}"
        )
    return size


def plan_parts(total: int, settings: TransferSettings) -> PartPlan:
    """Return the :class:`PartPlan` for an image of ``total`` bytes.

    Raises:
      ConfigError: As :func:`part_size_for`, or when the segment limit is below one part or
        above :data:`MAX_OBJECT_SIZE`.
    """
    part_size = part_size_for(settings)
    if settings.segment_limit > MAX_OBJECT_SIZE:
        raise ConfigError(
            f"SNAPARCHIVE_SEGMENT_LIMIT: {format_size(settings.segment_limit)} is above S3's "
            f"largest object ({format_size(MAX_OBJECT_SIZE)})"
        )
    segment_size = min(settings.segment_limit, part_size * MAX_PARTS) // part_size * part_size
    if segment_size == 0:
        raise ConfigError(
            f"SNAPARCHIVE_SEGMENT_LIMIT: {format_size(settings.segment_limit)} is below one part "
            f"of {format_size(part_size)}"
        )
    return PartPlan(total, part_size, segment_size)


def buffer_count(part_size: int, settings: TransferSettings) -> int:
    """Return how many part buffers may be in flight: ``upload_concurrency + 1`` at most,
    and never more than ``memory_limit`` holds (at least one)."""
    return max(1, min(settings.upload_concurrency + 1, settings.memory_limit // part_size))
