"""Scrub: read archives back and check them, and remember what each check found.

A verification reads every object of an archive (ranged GETs, :mod:`worker.reader`), checks
each object's size against the manifest and the whole image's MD5 against the manifest's.
Its result is written beside the manifest as ``verify.json`` (the bucket outlives the job
store; the manifest itself is never rewritten), where ``archives list`` and ``status`` read
it. A failed verification deletes nothing: it is logged at ERROR and counted in the metrics.

Which archives a scrub reads: all of them, a deterministic subset ``N/T`` (the archives whose
snapshot id falls in group N of T: T runs with N = 1..T read every archive once, as restic's
``--read-data-subset``), or a random sample of a share of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from worker import metrics
from worker.archive import ArchiveStore
from worker.catalog import ArchiveEntry
from worker.errors import NotFound, SnaparchiveError, describe, is_verification_failure
from worker.reader import MissingObject
from worker.restore import stream_archive

log = logging.getLogger(__name__)

VERIFY_NAME = "verify.json"
#: The most bytes of a ``verify.json`` read back.
VERIFY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Verification:
    """What one check of an archive found.

    Attributes:
      zone, snapshot_id, instance_id, manifest: The archive.
      checked_at: When the check ended (ISO 8601, UTC).
      ok: Whether every object and the image's MD5 matched the manifest.
      md5: The MD5 read (``None`` when the read did not get to the end).
      error: What did not match, in one line (``None`` when ``ok``).
    """

    zone: str
    snapshot_id: str
    instance_id: str | None
    manifest: str
    checked_at: str
    ok: bool
    md5: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def in_subset(snapshot_id: str, part: int, parts: int) -> bool:
    """Whether the archive of ``snapshot_id`` is in group ``part`` (1..``parts``)."""
    group = int(hashlib.sha256(snapshot_id.encode()).hexdigest(), 16) % parts
    return group == part - 1


def select(
    entries: Sequence[ArchiveEntry],
    subset: tuple[int, int] | None = None,
    sample: float | None = None,
    rng: random.Random | None = None,
) -> list[ArchiveEntry]:
    """The archives a scrub reads: all, the subset ``(N, T)``, or a random ``sample`` percent
    (at least one when there is any)."""
    if subset is not None:
        return [e for e in entries if in_subset(e.snapshot_id, *subset)]
    if sample is not None:
        if not entries:
            return []
        count = max(1, math.ceil(len(entries) * sample / 100))
        return (rng or random.Random()).sample(list(entries), min(count, len(entries)))
    return list(entries)


def verify_key(entry: ArchiveEntry) -> str:
    """Where an archive's last verification is kept: beside its manifest."""
    return entry.manifest_key.rpartition("/")[0] + "/" + VERIFY_NAME


async def verify(store: ArchiveStore, entry: ArchiveEntry) -> Verification:
    """Read an archive back and check it; record and report the result.

    Raises:
      SnaparchiveError: The store could not be read (not a verdict on the archive: nothing
        is recorded).
    """
    m = entry.manifest
    md5: str | None = None
    try:
        md5 = await stream_archive(store, m, None)
    except SnaparchiveError as error:
        # A missing object, a size that differs, an MD5 mismatch: the archive is bad. What is
        # only a store that does not answer is not a verdict, and goes up.
        if not (is_verification_failure(error) or isinstance(error, MissingObject)):
            raise
        problem: str | None = describe(error)
    else:
        problem = None
    result = Verification(
        zone=m.zone,
        snapshot_id=m.snapshot_id,
        instance_id=m.instance_id,
        manifest=entry.manifest_key,
        checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ok=problem is None,
        md5=md5,
        error=problem,
    )
    await store.put_object(verify_key(entry), json.dumps(result.to_json()).encode())
    if result.ok:
        log.info("%s/%s: verified, md5 %s", m.zone, m.snapshot_id, md5)
        metrics.archive_verified(m.zone, m.instance_id, m.created_at)
    else:
        log.error("%s/%s: VERIFICATION FAILED: %s", m.zone, m.snapshot_id, problem)
        metrics.verify_failed()
    return result


async def last_verification(store: ArchiveStore, entry: ArchiveEntry) -> dict[str, Any] | None:
    """The last recorded verification of an archive, or ``None``."""
    try:
        raw = await store.read_small(verify_key(entry), VERIFY_LIMIT)
    except NotFound:
        return None
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
