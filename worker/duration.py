"""Calendar durations in restic's ``1y2m3d4h`` syntax.

A :class:`Duration` counts years, months, days and hours separately, because
a month or a year is not a fixed number of seconds. :meth:`Duration.before`
subtracts one from a moment the way restic's ``forget --keep-within`` does
(Go's ``time.AddDate`` and then the hours), so ``within = "1m"`` in a policy
means "created after the newest archive minus one calendar month".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_SYNTAX = re.compile(r"(?:\d+[ymdh])+")
_COMPONENT = re.compile(r"(\d+)([ymdh])")
_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}


@dataclass(frozen=True)
class Duration:
    """A span of calendar time: ``years``, ``months``, ``days`` and ``hours`` (each >= 0).

    ``str()`` gives the canonical form (``1y2m3d4h``, zero components left out).
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``1y2m3d4h`` style text: whole numbers, each followed by ``y`` (years),
        ``m`` (months, never minutes), ``d`` (days) or ``h`` (hours).

        At least one component; each unit at most once, in any order (restic writes
        ``1y1d1m`` too); no signs, no spaces between components.

        Raises:
          ValueError: When ``text`` is not such a duration (the message quotes it).
        """
        if not isinstance(text, str):
            raise ValueError(f"must be a duration string like 30d or 1y2m, got {text!r}")
        stripped = text.strip()
        if not _SYNTAX.fullmatch(stripped):
            raise ValueError(
                f"must be a duration like 1y2m3d4h (years, months, days, hours), got {_quote(text)}"
            )
        values: dict[str, int] = {}
        for number, unit in _COMPONENT.findall(stripped):
            name = _UNITS[unit]
            if name in values:
                raise ValueError(f"{_quote(text)} gives the {name} twice")
            values[name] = int(number)
        return cls(**values)

    def __str__(self) -> str:
        text = "".join(
            f"{getattr(self, name)}{unit}" for unit, name in _UNITS.items() if getattr(self, name)
        )
        return text or "0h"

    @property
    def is_zero(self) -> bool:
        """Whether every component is 0."""
        return not (self.years or self.months or self.days or self.hours)

    @property
    def is_fixed(self) -> bool:
        """Whether the duration is a fixed number of seconds (no years, no months)."""
        return not (self.years or self.months)

    def to_timedelta(self) -> timedelta:
        """The duration as a :class:`~datetime.timedelta` (a day is 24 hours).

        Raises:
          ValueError: When it has years or months, which have no fixed length.
        """
        if not self.is_fixed:
            raise ValueError(f"{self} has years or months, which have no fixed length")
        return timedelta(days=self.days, hours=self.hours)

    def before(self, moment: datetime) -> datetime:
        """Return ``moment`` minus this duration, with restic's calendar arithmetic.

        Years, months and days are subtracted from the calendar fields at once and the
        result normalised like Go's ``time.AddDate`` (which restic uses): a day past the
        end of the month rolls over into the next one, so 31 March minus ``1m`` is
        "31 February", that is 3 March (2 March in a leap year), and 29 February 2024
        minus ``1y`` is 1 March 2023. Then the ``hours`` are subtracted. The fields
        are taken as they are in ``moment``'s own time zone: pass UTC datetimes. A result
        before year 1 gives the earliest datetime Python has, in ``moment``'s zone.
        """
        month0 = moment.month - 1 - self.months
        year = moment.year - self.years + month0 // 12
        try:
            day = date(year, month0 % 12 + 1, 1) + timedelta(days=moment.day - 1 - self.days)
            shifted = moment.replace(year=day.year, month=day.month, day=day.day)
            return shifted - timedelta(hours=self.hours)
        except (ValueError, OverflowError):
            return datetime.min.replace(tzinfo=moment.tzinfo)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
