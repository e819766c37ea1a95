"""The record of a job: its step, progress and outcome, and how a stored one is read.

Jobs are of a ``kind``: :data:`ARCHIVE` (a snapshot into the bucket), :data:`RESTORE` (an
archive back into Exoscale as a template) or :data:`GENESIS` (an archive brought up at Genesis
Cloud). All are keyed by the snapshot's zone and id, so a snapshot has at most one active job
of each kind.

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

#: The kinds of job: an archive, a restore of an archive as a template, and a restore of an
#: archive at Genesis Cloud.
ARCHIVE = "archive"
RESTORE = "restore"
GENESIS = "genesis"
KINDS = (ARCHIVE, RESTORE, GENESIS)


def job_key(zone: str, snapshot_id: str, kind: str = ARCHIVE) -> str:
    """The job's key in the store's index: ``{zone}:{id}`` for an archive (as it always was),
    ``{kind}:{zone}:{id}`` for the others (no zone is named as a kind)."""
    return f"{zone}:{snapshot_id}" if kind == ARCHIVE else f"{kind}:{zone}:{snapshot_id}"


def split_key(key: str) -> tuple[str, str, str]:
    """``(kind, zone, snapshot_id)`` of a :func:`job_key`."""
    head, _, rest = key.partition(":")
    if head in KINDS and head != ARCHIVE:
        zone, _, snapshot_id = rest.partition(":")
        return head, zone, snapshot_id
    return ARCHIVE, head, rest


class Step(StrEnum):
    """Where a job stands. A ``str``: records store and compare the plain words."""

    QUEUED = "queued"
    AWAITING_EXPORT = "awaiting-export"
    TRANSFERRING = "transferring"
    #: A restore waits for another cloud to import the image (jobs.genesis_steps).
    AWAITING_PROVIDER = "awaiting-provider"
    #: A restore joins an archive's segments into one temporary object.
    JOINING = "joining"
    #: A restore waits for Exoscale to register the template.
    REGISTERING = "registering"
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
    """The state of one job: an archive, or a restore of an archive as a template.

    Attributes:
      zone, snapshot_id: What is archived (for a restore: the archive's source snapshot).
      step: A :class:`Step`.
      created_at, updated_at: UNIX times.
      operation_id: The export (or registration) operation being waited for, if any.
      wait_started_at: When waiting for it began (drives the polling schedule).
      bytes_done, bytes_total: Transfer progress.
      result: The archive once done (:meth:`worker.archive.ArchiveResult.to_dict`); for a
        restore, the template (``template_id``, ``name``, ``zone``, ``size``, ``checksum``,
        ``source``); for a Genesis restore, :func:`jobs.genesis_steps.outcome`.
      error: Why the job failed, in one line.
      error_kind: What kind of failure it was (:func:`worker.errors.error_kind`):
        ``verification`` (bad data: exit status 3), ``permanent`` or ``transient``.
      cancel_requested: An operator asked the job to stop.
      sent_at: When the job's first message was handed to the broker (``None``: never, as
        for a send that failed or an ``archive --local`` run).
      policy: The backup policy whose run queued the job (recorded in the manifest), if any.
      kind: :data:`ARCHIVE`, :data:`RESTORE` or :data:`GENESIS`.
      restore: What a restore was asked for: ``target_zone``, ``name`` and the template
        settings the operator overrode (see :class:`worker.source_template.Overrides`).
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
    kind: str = ARCHIVE
    restore: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return job_key(self.zone, self.snapshot_id, self.kind)

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


def new_record(zone: str, snapshot_id: str, kind: str = ARCHIVE) -> JobRecord:
    now = time.time()
    return JobRecord(zone=zone, snapshot_id=snapshot_id, created_at=now, updated_at=now, kind=kind)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _result(value: Any) -> bool:
    """The shape ``status`` and ``archive`` print from (see
    :meth:`worker.manifest.ArchiveResult.to_dict`), or a restore's (:func:`_restored`)."""
    if not isinstance(value, dict):
        return False
    if "template_id" in value:
        return _restored(value)
    keys_ok = all(isinstance(value.get(k), str) for k in ("bucket", "manifest", "md5"))
    objects = value.get("objects")
    return (
        keys_ok
        and _count(value.get("size"))
        and isinstance(objects, list)
        and all(isinstance(o, dict) and isinstance(o.get("key"), str) for o in objects)
        and all(_count(o.get("size")) for o in objects)
    )


def _restored(value: dict[str, Any]) -> bool:
    """A restore's result: ``template_id``, ``name``, ``zone``, ``checksum`` (strings),
    ``size`` and ``source`` (``zone``, ``snapshot_id``, ``manifest``)."""
    source = value.get("source")
    return (
        all(isinstance(value.get(k), str) for k in ("template_id", "name", "zone", "checksum"))
        and _count(value.get("size"))
        and isinstance(source, dict)
        and all(isinstance(source.get(k), str) for k in ("zone", "snapshot_id", "manifest"))
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
    "kind": lambda value: value in KINDS,
    "restore": _optional(lambda value: isinstance(value, dict)),
}
#: Fields a record cannot do without; the others have defaults (records written before a
#: field existed lack it).
_REQUIRED = ("zone", "snapshot_id", "step", "updated_at")
#: What replaces an unreadable record, by kind.
_AGAIN = {ARCHIVE: "archiving it again", RESTORE: "restoring it again"}


def parse(zone: str, snapshot_id: str, data: dict[bytes, bytes], kind: str = ARCHIVE) -> JobRecord:
    """The record a job hash of ``kind`` holds, or an :attr:`Step.UNREADABLE` one naming
    what is wrong.

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
    values.setdefault("kind", ARCHIVE)  # records from before kinds were archives
    for name, expected in (("zone", zone), ("snapshot_id", snapshot_id), ("kind", kind)):
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
        kind=kind,
        step=Step.UNREADABLE,
        created_at=values.get("created_at", 0.0),
        updated_at=values.get("updated_at", 0.0),
        error=f"unreadable job record ({'; '.join(problems)}); {_AGAIN[kind]} replaces it",
    )
