"""InstaVM snapshots: ``GET /v1/snapshots`` (the account's own plus public system ones).

Authentication is ``X-API-Key: $INSTAVM_API_KEY``. Sizes are already bytes. InstaVM has no
regions, so every record's region is :data:`REGION` (``global``), which is also the zone
part of an InstaVM archive key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.errors import ConfigError
from worker.fields import Fields, items_of
from worker.http import JsonApi
from worker.providers.base import Provider, SnapshotRecord, endpoint_from_env, normalise_status
from worker.retry import RetryPolicy

DEFAULT_ENDPOINT = "https://api.instavm.io"
REGION = "global"

STATUS_MAP = {
    "ready": "ready",
    "available": "ready",
    "completed": "ready",
    "pending": "creating",
    "creating": "creating",
    "building": "creating",
    "in_progress": "creating",
    "deleting": "deleting",
    "failed": "error",
    "error": "error",
}

SnapshotType = Literal["user", "system"]


@dataclass(frozen=True)
class InstaVMSettings:
    """Variables: ``INSTAVM_API_KEY``, ``INSTAVM_API_ENDPOINT`` (default the real API)."""

    api_key: str = field(default="", repr=False)
    endpoint: str = DEFAULT_ENDPOINT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InstaVMSettings:
        return cls(
            api_key=env.get("INSTAVM_API_KEY", ""),
            endpoint=endpoint_from_env(env, "INSTAVM_API_ENDPOINT", DEFAULT_ENDPOINT),
        )


class InstaVM(Provider):
    """The InstaVM snapshot API.

    Parameters:
      settings: API key and endpoint.
      retry: Retry policy (default :class:`RetryPolicy`).
      snapshot_type: What the inventory lists: ``user`` (default: the account's own
        snapshots, the ones worth archiving), ``system`` (public base images) or ``None`` (both).
    """

    name = "instavm"
    credential = "INSTAVM_API_KEY"

    def __init__(
        self,
        settings: InstaVMSettings,
        *,
        retry: RetryPolicy | None = None,
        snapshot_type: SnapshotType | None = "user",
    ) -> None:
        if not settings.api_key:
            raise ConfigError("INSTAVM_API_KEY is not set")
        self.settings = settings
        self.snapshot_type = snapshot_type
        self.api = JsonApi(self.name, retry=retry)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, retry: RetryPolicy | None = None) -> InstaVM:
        return cls(InstaVMSettings.from_env(env), retry=retry)

    async def close(self) -> None:
        await self.api.close()

    async def list_snapshots(self, region: str | None = None) -> list[SnapshotRecord]:
        """Return the snapshots of ``snapshot_type`` (none when ``region`` is not ``global``)."""
        if region not in (None, REGION):
            return []
        params = {"type": self.snapshot_type} if self.snapshot_type else None
        data = await self.api.request_json(
            "GET",
            f"{self.settings.endpoint}/v1/snapshots",
            params=params,
            headers={"X-API-Key": self.settings.api_key},
        )
        items = items_of(self.name, data, None, "list-snapshots")
        return [self._record(item, f"snapshot {n}") for n, item in enumerate(items, 1)]

    def _record(self, item: Any, what: str) -> SnapshotRecord:
        fields = Fields(self.name, item, what)
        status = fields.required("status", str)
        fields.required("created_at", str)  # the one date the schema promises
        return SnapshotRecord(
            provider=self.name,
            region=REGION,
            id=fields.text("id"),
            name=fields.optional("name", str) or "",
            status=normalise_status(status, STATUS_MAP),
            raw_status=status,
            size_bytes=fields.size("size_bytes"),
            source_id=fields.optional("source_vm_id", str),
            created_at=fields.timestamp("created_at"),
            raw=item,
        )
