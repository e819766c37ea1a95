"""Gcore Cloud snapshots: ``GET /cloud/v1/snapshots/{project_id}/{region_id}``.

Authentication is ``Authorization: apikey $GCORE_API_KEY``. A listing covers one project
in one region, both numeric ids; it is read with ``limit``/``offset`` until ``count``
snapshots have come. Sizes are GiB in the API and bytes in records; a record's region is
the numeric region id (the API's ``region`` is a display name such as ``Luxembourg 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ConfigError
from worker.fields import Fields, items_of
from worker.http import JsonApi
from worker.providers.base import (
    NotARegion,
    Provider,
    SnapshotRecord,
    endpoint_from_env,
    normalise_status,
)
from worker.retry import RetryPolicy
from worker.units import GiB

DEFAULT_ENDPOINT = "https://api.gcore.com"

#: Gcore volume snapshots carry OpenStack Cinder's statuses.
STATUS_MAP = {
    "available": "ready",
    "creating": "creating",
    "backing-up": "exporting",
    "deleting": "deleting",
    "deleted": "deleting",
    "error": "error",
    "error_deleting": "error",
}


def _region_id(value: str, what: str) -> int:
    if not value.strip().isdigit():
        raise NotARegion(f"gcore: {what} must be a numeric Gcore region id, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class GcoreSettings:
    """Variables: ``GCORE_API_KEY``, ``GCORE_PROJECT_ID``, ``GCORE_REGION_ID`` (the region
    listed when none is asked for), ``GCORE_API_ENDPOINT`` (default the real API)."""

    api_key: str = field(default="", repr=False)
    project_id: int | None = None
    region_id: int | None = None
    endpoint: str = DEFAULT_ENDPOINT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GcoreSettings:
        project = env.get("GCORE_PROJECT_ID", "").strip()
        region = env.get("GCORE_REGION_ID", "").strip()
        if project and not project.isdigit():
            raise ConfigError(f"GCORE_PROJECT_ID must be a number, not {project!r}")
        if region and not region.isdigit():
            raise ConfigError(f"GCORE_REGION_ID must be a number, not {region!r}")
        return cls(
            api_key=env.get("GCORE_API_KEY", ""),
            project_id=int(project) if project else None,
            region_id=int(region) if region else None,
            endpoint=endpoint_from_env(env, "GCORE_API_ENDPOINT", DEFAULT_ENDPOINT),
        )


class Gcore(Provider):
    """The Gcore Cloud snapshot API of one project.

    Parameters:
      settings: API key, project, default region and endpoint.
      retry: Retry policy (default :class:`RetryPolicy`).
      limit: Snapshots asked per page, 1 to 1000 (default 1000, the API's most).
    """

    name = "gcore"
    credential = "GCORE_API_KEY"

    def __init__(
        self, settings: GcoreSettings, *, retry: RetryPolicy | None = None, limit: int = 1000
    ) -> None:
        if not settings.api_key:
            raise ConfigError("GCORE_API_KEY is not set")
        if settings.project_id is None:
            raise ConfigError("GCORE_PROJECT_ID is not set")
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be 1 to 1000, not {limit}")
        self.settings = settings
        self.limit = limit
        self.api = JsonApi(self.name, retry=retry)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, retry: RetryPolicy | None = None) -> Gcore:
        return cls(GcoreSettings.from_env(env), retry=retry)

    async def close(self) -> None:
        await self.api.close()

    def regions(self, asked: str | None) -> Sequence[str | None]:
        if asked is not None:
            return [str(_region_id(asked, "--region"))]
        if self.settings.region_id is None:
            raise ConfigError("gcore: no region: set GCORE_REGION_ID or pass --region ID")
        return [str(self.settings.region_id)]

    async def list_snapshots(
        self,
        region: str | None = None,
        *,
        instance_id: str | None = None,
        volume_id: str | None = None,
        schedule_id: str | None = None,
        lifecycle_policy_id: int | None = None,
    ) -> list[SnapshotRecord]:
        """Return the project's snapshots in ``region`` (default ``GCORE_REGION_ID``).

        Parameters:
          region: A numeric region id.
          instance_id, volume_id, schedule_id, lifecycle_policy_id: Server-side filters.

        Raises:
          NotARegion: ``region`` is not numeric.
          ConfigError: No region given and ``GCORE_REGION_ID`` is unset.
        """
        (region_id,) = self.regions(region)
        url = f"{self.settings.endpoint}/cloud/v1/snapshots/{self.settings.project_id}/{region_id}"
        filters = {
            "instance_id": instance_id,
            "volume_id": volume_id,
            "schedule_id": schedule_id,
            "lifecycle_policy_id": lifecycle_policy_id,
        }
        params: dict[str, str | int] = {k: v for k, v in filters.items() if v is not None}
        records: dict[str, SnapshotRecord] = {}
        offset, count = 0, None
        while count is None or offset < count:
            data = await self.api.request_json(
                "GET",
                url,
                params={**params, "limit": self.limit, "offset": offset},
                headers={"Authorization": f"apikey {self.settings.api_key}"},
            )
            what = f"list-snapshots at offset {offset}"
            count = Fields(self.name, data, what).required("count", int)
            items = items_of(self.name, data, "results", what)
            if not items:
                break  # the list shrank while we read it
            for n, item in enumerate(items):
                record = self._record(item, f"snapshot {offset + n + 1}", str(region_id))
                records[record.id] = record  # a snapshot shifted across pages is kept once
            offset += len(items)
        return list(records.values())

    def _record(self, item: Any, what: str, region: str) -> SnapshotRecord:
        fields = Fields(self.name, item, what)
        status = fields.optional("status", str)
        return SnapshotRecord(
            provider=self.name,
            region=region,
            id=fields.text("id"),
            name=fields.optional("name", str) or "",
            status=normalise_status(status, STATUS_MAP),
            raw_status=status,
            size_bytes=fields.size("size", GiB),
            source_id=fields.optional("volume_id", str),
            created_at=fields.timestamp("created_at"),
            raw=item,
        )
