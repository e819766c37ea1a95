"""Archive retention (``forget``): restic's keep rules, applied to archives.

:func:`plan` judges archives and returns one :class:`Decision` per archive; it
deletes nothing (the caller removes the manifest first, then the objects). The
rules are restic's ``forget --keep-*`` (doc/060_forget.rst), as issue 11 spells
them:

- Archives are grouped by (zone, instance id); each group is judged alone, by the
  snapshot's ``created_at`` (UTC), newest first.
- ``last = n`` keeps the n newest.
- ``hourly/daily/weekly/monthly/yearly = n``: walking newest to oldest, the newest
  archive of each calendar period, for the n newest periods that have an archive.
  Periods are UTC calendar buckets: the hour (xx:00 to xx:59), the day, the ISO week
  (Monday 00:00 to Sunday 23:59; the week of 1 January may belong to the year
  before), the month, the year.
- ``within = D`` keeps every archive created strictly after the group's newest archive
  minus D (calendar arithmetic as restic's, see :meth:`Duration.before`), not now
  minus D: a policy that stopped running keeps its archives.
- The newest archive of a group is always kept (reason ``newest``).
- An archive is kept when any rule keeps it, and lists every rule that did, in the
  order of :data:`REASONS`.
- Archives without an instance id (archived ad hoc from a snapshot whose instance is
  unknown) are never removed: action ``keep``, the single reason ``no-instance``.

Decisions of our own, where restic is silent or differs:

- Ties: archives of one group with the same ``created_at`` are ordered by
  ``snapshot_id`` (ascending) and the first counts as the newer, so the result does
  not depend on the order the bucket listed the manifests (restic keeps its input
  order). Then ``last`` counts each of them, a period rule keeps only the first,
  ``within`` keeps all of them or none, and only the first is ``newest``.
- Newer restic keeps the *oldest* archive too when a period rule still has count left
  at the end (reason ``oldest ...``). Issue 11 does not ask for it and this does not
  do it: ``yearly = 10`` over three years of archives keeps three.
- restic ignores snapshots dated in the future when it looks for the newest one;
  there is no clock here, the newest ``created_at`` (stamped by Exoscale) is the anchor.
- Rules of 0 keep nothing; rules that keep nothing at all leave only the newest.
  restic's ``--keep-tag`` and ``--keep-within-{hourly,...}`` have no equivalent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.duration import Duration

PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
KEEP_KEYS = ("last", *PERIODS, "within")
#: Every reason a kept archive may list, in the order it lists them.
REASONS = (*KEEP_KEYS, "newest")
NO_INSTANCE = "no-instance"
KEEP = "keep"
REMOVE = "remove"


@dataclass(frozen=True)
class KeepRules:
    """The rules of a policy's ``[policy.keep]`` (see the module docstring).

    ``last``, ``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly``: counts >= 0
    (default 0: the rule keeps nothing); ``within``: a :class:`Duration` or None.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def as_dict(self) -> dict[str, int | str]:
        """The rules that keep something, as written in the file."""
        rules: dict[str, int | str] = {k: getattr(self, k) for k in KEEP_KEYS[:-1]}
        rules = {k: v for k, v in rules.items() if v}
        if self.within is not None:
            rules["within"] = str(self.within)
        return rules

    def describe(self) -> str:
        """One line for people: ``keep 3 last, 7 daily, all within 30d of the newest``."""
        parts = [f"{n} {rule}" for rule, n in self.as_dict().items() if rule != "within"]
        if self.within is not None:
            parts.append(f"all within {self.within} of the newest")
        return "keep " + ", ".join(parts) if parts else "keep the newest only"


@dataclass(frozen=True)
class Candidate:
    """One archive to judge.

    Parameters:
      zone: The snapshot's zone.
      instance_id: The instance the snapshot was taken of; None when unknown.
      snapshot_id: The snapshot's id (also the tie-break between equal ``created_at``).
      created_at: The snapshot's creation time (timezone-aware).
      payload: Anything the caller needs back (the manifest key, ...); not looked at.
    """

    zone: str
    instance_id: str | None
    snapshot_id: str
    created_at: datetime
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Decision:
    """What :func:`plan` decided for one archive: ``action`` is ``keep`` or ``remove``;
    ``reasons`` the rules that kept it (empty when removed)."""

    candidate: Candidate
    action: str
    reasons: tuple[str, ...] = ()

    @property
    def keep(self) -> bool:
        return self.action == KEEP

    def as_dict(self) -> dict[str, Any]:
        """The fields of ``forget --json`` that come from here (the caller adds
        ``manifest`` from the payload): ``created_at`` in UTC, ISO 8601 with ``Z``."""
        c = self.candidate
        return {
            "zone": c.zone,
            "instance_id": c.instance_id,
            "snapshot_id": c.snapshot_id,
            "created_at": _utc(c).isoformat().replace("+00:00", "Z"),
            "action": self.action,
            "reasons": list(self.reasons),
        }


def plan(candidates: Iterable[Candidate], rules: KeepRules) -> list[Decision]:
    """Judge every archive of ``candidates`` by ``rules``.

    Returns one decision per candidate, ordered by zone, then instance id (archives
    without one last in their zone), then newest first (ties by ``snapshot_id``).

    Raises:
      ValueError: When a ``created_at`` is naive (its zone would be a guess).
    """
    groups: dict[tuple[str, str | None], list[Candidate]] = {}
    for candidate in candidates:
        _utc(candidate)  # refuse naive datetimes before deciding anything
        groups.setdefault((candidate.zone, candidate.instance_id), []).append(candidate)
    decisions: list[Decision] = []
    for zone, instance_id in sorted(groups, key=lambda k: (k[0], k[1] is None, k[1] or "")):
        ordered = _newest_first(groups[zone, instance_id])
        if instance_id is None:
            decisions.extend(Decision(c, KEEP, (NO_INSTANCE,)) for c in ordered)
        else:
            decisions.extend(_judge(ordered, rules))
    return decisions


def _judge(ordered: list[Candidate], rules: KeepRules) -> list[Decision]:
    """Decide for one group, ``ordered`` newest first."""
    left = {rule: getattr(rules, rule) for rule in PERIODS}
    last_period: dict[str, tuple[int, ...] | None] = dict.fromkeys(PERIODS)
    newest = _utc(ordered[0])
    cutoff = rules.within.before(newest) if rules.within is not None else None
    decisions: list[Decision] = []
    for index, candidate in enumerate(ordered):
        created = _utc(candidate)
        reasons: list[str] = []
        if index < rules.last:
            reasons.append("last")
        for rule in PERIODS:
            period = _period(rule, created)
            # Newest first, so the first archive seen in a period is its newest one.
            if left[rule] > 0 and period != last_period[rule]:
                last_period[rule] = period
                left[rule] -= 1
                reasons.append(rule)
        if cutoff is not None and created > cutoff:
            reasons.append("within")
        if index == 0:
            reasons.append("newest")
        decisions.append(Decision(candidate, KEEP if reasons else REMOVE, tuple(reasons)))
    return decisions


def _period(rule: str, moment: datetime) -> tuple[int, ...]:
    """The calendar period of ``moment`` (UTC) for a period rule."""
    if rule == "hourly":
        return moment.year, moment.month, moment.day, moment.hour
    if rule == "daily":
        return moment.year, moment.month, moment.day
    if rule == "weekly":
        iso = moment.isocalendar()
        return iso.year, iso.week
    if rule == "monthly":
        return moment.year, moment.month
    return (moment.year,)


def _newest_first(group: list[Candidate]) -> list[Candidate]:
    # Two stable sorts: snapshot_id ascending breaks ties of created_at (descending).
    ordered = sorted(group, key=lambda c: c.snapshot_id)
    ordered.sort(key=_utc, reverse=True)
    return ordered


def _utc(candidate: Candidate) -> datetime:
    moment = candidate.created_at
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"snapshot {candidate.snapshot_id}: created_at must be timezone-aware")
    return moment.astimezone(UTC)
