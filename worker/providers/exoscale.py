"""Exoscale snapshots, through :class:`~worker.exoscale.ExoscaleClient`: ``GET /v2/snapshot``
in every zone (or the one asked for). Sizes are GiB in the API and bytes in records."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from worker.errors import ConfigError
from worker.exoscale import ExoscaleClient
from worker.fields import Fields
from worker.models import Snapshot
from worker.providers.base import NotARegion, Provider, SnapshotRecord, normalise_status
from worker.retry import RetryPolicy
from worker.settings import EXOSCALE_ZONES, ZONE_NAME, ExoscaleSettings
from worker.units import GiB

#: ``snapshotting``, ``ready``, ``exporting``, ``exported``, ``deleting``, ``deleted``, ``error``.
STATUS_MAP = {
    "snapshotting": "creating",
    "ready": "ready",
    "exported": "ready",  # still a usable snapshot, with a downloadable export besides
    "exporting": "exporting",
    "deleting": "deleting",
    "deleted": "deleting",
    "error": "error",
}


def record(zone: str, snapshot: Snapshot) -> SnapshotRecord:
    """Return the common record of an Exoscale snapshot of ``zone``.

    :class:`~worker.models.Snapshot` reads leniently what a job needs; the fields shown here
    are checked again on its raw record (an empty id, a size that is not a whole number of
    GiB, or past any disk, is a malformed answer).
    """
    fields = Fields(Exoscale.name, snapshot.raw, f"snapshot {snapshot.id or '(no id)'}")
    return SnapshotRecord(
        provider=Exoscale.name,
        region=zone,
        id=fields.text("id"),
        name=snapshot.name,
        status=normalise_status(snapshot.state, STATUS_MAP),
        raw_status=snapshot.state,
        size_bytes=fields.size("size", GiB) or None,  # 0: not known yet
        source_id=snapshot.instance_id,
        created_at=fields.timestamp("created-at"),
        raw=snapshot.raw,  # without the presigned URL: models.Snapshot strips it
    )


class Exoscale(Provider):
    """Exoscale instance snapshots across zones.

    Parameters:
      settings: Credentials and endpoint template (``EXOSCALE_API_*``).
      retry: Retry policy (default :class:`RetryPolicy`).
      zones: The zones listed when none is asked for (default :data:`EXOSCALE_ZONES`).
    """

    name = "exoscale"
    credential = "EXOSCALE_API_KEY"

    def __init__(
        self,
        settings: ExoscaleSettings,
        *,
        retry: RetryPolicy | None = None,
        zones: Sequence[str] = EXOSCALE_ZONES,
    ) -> None:
        self.client = ExoscaleClient(settings, retry=retry)
        self.zones = tuple(zones)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, retry: RetryPolicy | None = None) -> Exoscale:
        return cls(ExoscaleSettings.from_env(env), retry=retry)

    async def close(self) -> None:
        await self.client.close()

    def regions(self, asked: str | None) -> Sequence[str]:
        if asked is None:
            if not self.client.settings.zoned and len(self.zones) > 1:
                raise ConfigError(
                    "exoscale: EXOSCALE_API_ENDPOINT has no {zone}, so it serves one zone: "
                    "pass --region ZONE, or put {zone} in it"
                )
            return self.zones
        if not ZONE_NAME.fullmatch(asked):
            # Any zone of the right shape: a new zone is listed, an unknown one is the API's 404.
            raise NotARegion(f"exoscale: {asked!r} is not an Exoscale zone name (like ch-gva-2)")
        return [asked]

    async def list_snapshots(self, region: str | None = None) -> list[SnapshotRecord]:
        """Return the snapshots of zone ``region``, or of every zone in ``zones`` at once.

        The inventory calls this once per zone so that one zone failing hides no other.
        """
        zones = self.regions(region)
        # Every zone's call runs to its end before a failure is raised: none is left behind.
        listings = await asyncio.gather(
            *(self.client.list_snapshots(z) for z in zones), return_exceptions=True
        )
        records: list[SnapshotRecord] = []
        for zone, found in zip(zones, listings, strict=True):
            if isinstance(found, BaseException):
                raise found
            records.extend(record(zone, snapshot) for snapshot in found)
        return records
