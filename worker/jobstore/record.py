"""The record of a job: its step, progress and outcome, and how a stored one is read.

A record that cannot be read (fields missing, values that are not JSON or not of their type) is
reported, not raised: :func:`parse` returns it with the step :attr:`Step.UNREADABLE` and the
reason in ``error``, and the next claim replaces it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


class Step(StrEnum):
    """Where a job stands. A ``str``: records store and compare the plain words."""

    QUEUED = "queued"
    AWAITING_EXPORT = "awaiting-export"
    TRANSFERRING = "transferring"
    #: A restore waits for another cloud to import the image (jobs.genesis_steps).
    AWAITING_PROVIDER = "awaiting-provider"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A record the store cannot read: no step works on it and a new claim replaces it.
    UNREADABLE = "unreadable"

    @property
    def terminal(self) -> bool:
        """Whether the job is over (no step works on it any more)."""
        return self in TERMINAL


#: The steps after which nothing runs. Failed and cancelled jobs (and unreadable records) are
#: replaced by the next claim; a done one only when its archive is gone from the bucket.
TERMINAL = frozenset({Step.DONE, Step.FAILED, Step.CANCELLED, Step.UNREADABLE})
#: Claims replace a job in these steps.
REPLACEABLE = frozenset({Step.FAILED, Step.CANCELLED, Step.UNREADABLE})
#: The words of a failed job's ``error_kind``.
ERROR_KINDS = frozenset({"verification", "permanent", "transient"})


@dataclass
class JobRecord:
    """The state of one archive job.

    Attributes:
      zone, snapshot_id: What is archived.
      step: A :class:`Step`.
      created_at, updated_at: UNIX times.
      operation_id: The export operation being waited for, if any.
      wait_started_at: When waiting for the export began (drives the polling schedule).
      bytes_done, bytes_total: Transfer progress.
      result: The archive once done (:meth:`worker.archive.ArchiveResult.to_dict`).
      error: Why the job failed, in one line.
      error_kind: What kind of failure it was (:func:`worker.errors.error_kind`):
        ``verification`` (bad data: exit status 3), ``permanent`` or ``transient``.
      cancel_requested: An operator asked the job to stop.
      sent_at: When the job's first message was handed to the broker (``None``: never, as
        for a send that failed or an ``archive --local`` run).
      policy: The backup policy whose run queued the job (recorded in the manifest), if any.
    """

    zone: str
    snapshot_id: str
    step: Step = Step.QUEUED
    created_at: float = 0.0
    updated_at: float = 0.0
    operation_id: str | None = None
    wait_started_at: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_kind: str | None = None
    cancel_requested: bool = False
    sent_at: float | None = None
    policy: str | None = None

    @property
    def key(self) -> str:
        return f"{self.zone}:{self.snapshot_id}"

    @property
    def active(self) -> bool:
        return not Step(self.step).terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "step" in values:
            values["step"] = Step(values["step"])
        return cls(**values)


def new_record(zone: str, snapshot_id: str) -> JobRecord:
    now = time.time()
    return JobRecord(zone=zone, snapshot_id=snapshot_id, created_at=now, updated_at=now)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _result(value: Any) -> bool:
    """The shape ``status`` and ``archive`` print from: see
    :meth:`worker.manifest.ArchiveResult.to_dict`."""
    if not isinstance(value, dict):
        return False
    keys_ok = all(isinstance(value.get(k), str) for k in ("bucket", "manifest", "md5"))
    objects = value.get("objects")
    return (
        keys_ok
        and _count(value.get("size"))
        and isinstance(objects, list)
        and all(isinstance(o, dict) and isinstance(o.get("key"), str) for o in objects)
        and all(_count(o.get("size")) for o in objects)
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _string(value: Any) -> bool:
    return isinstance(value, str)


_STEP_WORDS = frozenset(step.value for step in Step)
#: What each field of a stored record must hold to be read.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "zone": _string,
    "snapshot_id": _string,
    "step": lambda value: value in _STEP_WORDS,
    "created_at": _number,
    "updated_at": _number,
    "operation_id": _optional(_string),
    "wait_started_at": _optional(_number),
    "bytes_done": _count,
    "bytes_total": _optional(_count),
    "result": _optional(_result),
    "error": _optional(_string),
    "error_kind": _optional(lambda value: value in ERROR_KINDS),
    "cancel_requested": lambda value: isinstance(value, bool),
    "sent_at": _optional(_number),
    "policy": _optional(_string),
}
#: Fields a record cannot do without; the others have defaults (records written before a
#: field existed lack it).
_REQUIRED = ("zone", "snapshot_id", "step", "updated_at")


def parse(zone: str, snapshot_id: str, data: dict[bytes, bytes]) -> JobRecord:
    """The record a job hash holds, or an :attr:`Step.UNREADABLE` one naming what is wrong.

    The reason names fields only, never their values (they are not ours to print).
    """
    values: dict[str, Any] = {}
    invalid: list[str] = []
    for raw_name, raw_value in data.items():
        name = raw_name.decode(errors="replace")
        check = _CHECKS.get(name)
        if check is None:
            continue  # a field of a newer version
        try:
            value = json.loads(raw_value)
        except ValueError:  # not JSON, or not text at all
            invalid.append(name)
            continue
        if not check(value):
            invalid.append(name)
            continue
        values[name] = value
    for name, expected in (("zone", zone), ("snapshot_id", snapshot_id)):
        if name in values and values[name] != expected:
            del values[name]
            invalid.append(name)
    missing = [name for name in _REQUIRED if name not in values and name not in invalid]
    if not missing and not invalid:
        return JobRecord.from_fields(values)
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if invalid:
        problems.append("invalid " + ", ".join(sorted(invalid)))
    return JobRecord(
        zone=zone,
        snapshot_id=snapshot_id,
        step=Step.UNREADABLE,
        created_at=values.get("created_at", 0.0),
        updated_at=values.get("updated_at", 0.0),
        error=f"unreadable job record ({'; '.join(problems)}); archiving it again replaces it",
    )
