"""The archives a bucket holds, read from their manifests: listing and removal.

The bucket is the record that outlives everything (instances, snapshots, the job store):
``archives list`` and retention read manifests, never the job store. An archive is
removed manifest first (the commit point: it is gone at once), then its objects; a crash in
between leaves objects without a manifest, which :mod:`worker.orphans` finds later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.archive import ArchiveStore
from worker.manifest import Manifest

log = logging.getLogger(__name__)

PROVIDER = "exoscale"


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from a manifest or an API (``Z`` or an offset; naive is UTC)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ArchiveEntry:
    """One archive: its manifest and where it is stored."""

    manifest_key: str
    manifest: Manifest

    @property
    def zone(self) -> str:
        return self.manifest.zone

    @property
    def instance_id(self) -> str | None:
        return self.manifest.instance_id

    @property
    def snapshot_id(self) -> str:
        return self.manifest.snapshot_id

    @property
    def created_at(self) -> datetime | None:
        """When the snapshot was taken: the moment the archive represents."""
        return parse_time(self.manifest.created_at)

    @property
    def moment(self) -> datetime:
        """``created_at``, or the archive's own time when the snapshot's is unknown."""
        return (
            self.created_at
            or parse_time(self.manifest.archived_at)
            or datetime.min.replace(tzinfo=UTC)
        )

    def to_json(self) -> dict[str, Any]:
        """The ``archives list --json`` object."""
        m = self.manifest
        return {
            "zone": m.zone,
            "instance_id": m.instance_id,
            "snapshot_id": m.snapshot_id,
            "snapshot_name": m.snapshot_name,
            "created_at": m.created_at,
            "archived_at": m.archived_at,
            "size": m.size,
            "md5": m.md5,
            "manifest": self.manifest_key,
            "policy": m.policy,
        }


async def list_archives(
    store: ArchiveStore, zone: str | None = None, instance_id: str | None = None
) -> list[ArchiveEntry]:
    """Every valid archive of Exoscale snapshots (of ``zone``, of ``instance_id``), by zone,
    instance and snapshot time. Manifests that do not validate are skipped with a warning.

    Raises:
      StoreError: When the store fails.
    """
    under = f"{PROVIDER}/{zone}/" if zone else f"{PROVIDER}/"
    scan = await store.scan_archives(under=under)
    for problem in scan.refused:
        log.warning("not an archive: %s", problem)
    entries = [
        ArchiveEntry(key, manifest)
        for key, manifest in scan.manifests.items()
        if instance_id is None or manifest.instance_id == instance_id
    ]
    return sorted(entries, key=lambda e: (e.zone, e.instance_id or "", e.moment, e.snapshot_id))


async def remove_archive(store: ArchiveStore, entry: ArchiveEntry) -> None:
    """Remove an archive: its manifest first (the archive is gone at once), then every
    object under its folder (the image objects and anything made from them)."""
    m = entry.manifest
    prefix = store.archive_prefix(m.provider, m.zone, m.snapshot_id)
    await store.delete_object(entry.manifest_key)
    for key in await store.list_keys(prefix):
        await store.delete_object(key)
    log.info("%s/%s: archive removed", m.zone, m.snapshot_id)
