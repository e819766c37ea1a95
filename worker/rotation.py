"""Snapshot rotation: the cloud keeps a policy's newest snapshots of each instance, no more.

Exoscale counts snapshots against a quota and deletes them with their instance, so a policy
keeps only ``snapshots_keep`` of its own per instance for a quick rollback. A snapshot is
deleted only when all of these hold: the policy took it (the job store remembers it, or its
archive's manifest names the policy), it is beyond the newest ``snapshots_keep`` of the
policy's snapshots of that instance, and it has a verified archive (its manifest reads back
valid, looked at right before the deletion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.archive import ArchiveStore
from worker.catalog import PROVIDER, list_archives, parse_time
from worker.exoscale import ExoscaleClient
from worker.policy import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotated:
    """What rotation did to one instance's snapshots: the ids ``kept`` and ``deleted``."""

    kept: tuple[str, ...]
    deleted: tuple[str, ...]


async def rotate(
    client: ExoscaleClient,
    store: ArchiveStore,
    policy: Policy,
    instance_id: str,
    taken: set[str],
) -> Rotated:
    """Delete ``policy``'s snapshots of ``instance_id`` beyond its newest ``snapshots_keep``
    that have a verified archive; ``taken`` are the snapshot ids the job store says the
    policy took.

    Raises:
      ApiError, StoreError: When the API or the store fails.
    """
    zone = policy.zone
    archived = {
        e.snapshot_id
        for e in await list_archives(store, zone=zone, instance_id=instance_id)
        if e.manifest.policy == policy.name
    }
    own = taken | archived
    snapshots = [
        s
        for s in await client.list_snapshots(zone)
        if s.instance_id == instance_id and s.id in own and s.state not in ("deleting", "deleted")
    ]
    snapshots.sort(
        key=lambda s: (parse_time(s.created_at) is not None, s.created_at or ""), reverse=True
    )
    kept, deleted = [s.id for s in snapshots[: policy.snapshots_keep]], []
    for snapshot in snapshots[policy.snapshots_keep :]:
        # The archive is looked at right before: a snapshot without one is never deleted.
        if await store.find_archive(PROVIDER, zone, snapshot.id) is None:
            log.warning("%s/%s: kept: it has no verified archive", zone, snapshot.id)
            kept.append(snapshot.id)
            continue
        # Not waited for: a snapshot being deleted is no longer counted, on any later run.
        await client.delete_snapshot(zone, snapshot.id)
        log.info(
            "%s/%s: snapshot deleted (archived, beyond the newest %d)",
            zone,
            snapshot.id,
            policy.snapshots_keep,
        )
        deleted.append(snapshot.id)
    return Rotated(tuple(kept), tuple(deleted))
