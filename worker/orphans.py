"""Objects of archives that have no manifest: what a removal or a commit cut short left.

An archive's objects without its manifest are no archive (only the manifest makes one), but
they may be a commit in progress: a transfer completes its objects first and writes the
manifest last. So a folder without a manifest is an orphan only when no job is running for
its snapshot, no lease is held on it, and its newest object is older than the age guard
(which alone protects an ``archive --local`` run without a job store).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.archive import ArchiveStore
from worker.jobstore import JobStore
from worker.manifest import MANIFEST_NAME
from worker.s3 import ListedObject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphan:
    """The objects of one archive folder without a manifest."""

    provider: str
    zone: str
    snapshot_id: str
    keys: tuple[str, ...]
    newest: datetime | None


def _folders(store: ArchiveStore, objects: list[ListedObject]) -> dict[str, list[ListedObject]]:
    folders: dict[str, list[ListedObject]] = defaultdict(list)
    for item in objects:
        parts = item.key[len(store.prefix) :].split("/")
        if len(parts) == 4 and all(parts[:3]):
            folders["/".join(parts[:3])].append(item)
    return folders


async def find_orphans(
    store: ArchiveStore,
    jobs: JobStore | None,
    *,
    under: str = "",
    min_age: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> list[Orphan]:
    """The archive folders under ``under`` (below the store's prefix) holding objects but no
    manifest, that no job or lease claims and whose newest object is at least ``min_age`` old.

    Parameters:
      store: The archive store.
      jobs: The job store, to skip folders of running jobs; ``None`` when it is unreachable
        (then only the age guard protects).
      under: A sub-prefix such as ``exoscale/ch-gva-2/`` (default: every archive).
      min_age: The age guard (default 1 h; 0 drops it).
      now: The current time (default: now).
    """
    now = now or datetime.now(UTC)
    orphans = []
    for folder, items in _folders(store, await store.list_objects(store.prefix + under)).items():
        if any(item.key.endswith("/" + MANIFEST_NAME) for item in items):
            continue
        provider, zone, snapshot_id = folder.split("/")
        times = [item.last_modified for item in items if item.last_modified is not None]
        newest = max(times) if times else None
        if newest is not None and now - newest < min_age:
            continue
        if jobs is not None:
            job = await jobs.get(zone, snapshot_id)
            if (job is not None and job.active) or await jobs.lease_left(zone, snapshot_id) > 0:
                continue
        keys = tuple(sorted(item.key for item in items))
        orphans.append(Orphan(provider, zone, snapshot_id, keys, newest))
    return orphans


async def remove_orphan(store: ArchiveStore, orphan: Orphan) -> bool:
    """Delete an orphan's objects, unless a manifest appeared meanwhile; whether it did."""
    if await store.exists(store.manifest_key(orphan.provider, orphan.zone, orphan.snapshot_id)):
        return False
    for key in orphan.keys:
        await store.delete_object(key)
    log.info(
        "%s/%s: removed %d object(s) without a manifest",
        orphan.zone,
        orphan.snapshot_id,
        len(orphan.keys),
    )
    return True
