"""Genesis Cloud snapshots: ``/compute/v1/snapshots`` (list page by page, get, delete, and
create from an image URL for a restore).

Authentication is ``Authorization: Bearer $GENESISCLOUD_TOKEN``. Sizes are GiB in the API
and bytes in records. The list call has no region filter, so a region is filtered here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ApiError, ConfigError
from worker.fields import Fields, items_of
from worker.http import JsonApi
from worker.providers.base import Provider, SnapshotRecord, endpoint_from_env, normalise_status
from worker.retry import RetryPolicy
from worker.units import GiB

DEFAULT_ENDPOINT = "https://api.genesiscloud.com"

#: The API's statuses: ``creating``, ``created``, ``pending_delete`` and ``deleting``.
STATUS_MAP = {
    "creating": "creating",
    "created": "ready",
    "active": "ready",
    "pending_delete": "deleting",
    "deleting": "deleting",
    "error": "error",
    "failed": "error",
}


@dataclass(frozen=True)
class GenesisCloudSettings:
    """Variables: ``GENESISCLOUD_TOKEN``, ``GENESISCLOUD_API_ENDPOINT`` (default the real API)."""

    token: str = field(default="", repr=False)
    endpoint: str = DEFAULT_ENDPOINT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GenesisCloudSettings:
        return cls(
            token=env.get("GENESISCLOUD_TOKEN", ""),
            endpoint=endpoint_from_env(env, "GENESISCLOUD_API_ENDPOINT", DEFAULT_ENDPOINT),
        )


class GenesisCloud(Provider):
    """The Genesis Cloud snapshot API.

    Parameters:
      settings: Token and endpoint.
      retry: Retry policy (default :class:`RetryPolicy`).
      per_page: Snapshots asked per page, 1 to 100 (default 100, the API's most).
    """

    name = "genesiscloud"
    credential = "GENESISCLOUD_TOKEN"

    def __init__(
        self,
        settings: GenesisCloudSettings,
        *,
        retry: RetryPolicy | None = None,
        per_page: int = 100,
    ) -> None:
        if not settings.token:
            raise ConfigError("GENESISCLOUD_TOKEN is not set")
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page must be 1 to 100, not {per_page}")
        self.settings = settings
        self.per_page = per_page
        self.api = JsonApi(self.name, retry=retry)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, retry: RetryPolicy | None = None) -> GenesisCloud:
        return cls(GenesisCloudSettings.from_env(env), retry=retry)

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        return await self.api.request_json(
            method,
            f"{self.settings.endpoint}/compute/v1/snapshots{path}",
            params=params,
            json_body=body,
            headers={"Authorization": f"Bearer {self.settings.token}"},
        )

    async def list_snapshots(self, region: str | None = None) -> list[SnapshotRecord]:
        """Return every snapshot of the account (only ``region``'s when given), reading pages
        until ``total_count`` snapshots have come or a page comes back empty."""
        records: dict[str, SnapshotRecord] = {}
        page, read, total = 1, 0, None
        # Counting what came, not pages, also copes with a server that caps per_page lower.
        while total is None or read < total:
            data = await self._call("GET", "", {"page": page, "per_page": self.per_page})
            what = f"list-snapshots page {page}"
            total = Fields(self.name, data, what).required("total_count", int)
            items = items_of(self.name, data, "snapshots", what)
            if not items:
                break  # the list shrank while we read it
            for n, item in enumerate(items, 1):
                record = self._record(item, f"snapshot {n} of page {page}")
                records[record.id] = record  # a snapshot shifted across pages is kept once
            read += len(items)
            page += 1
        return [r for r in records.values() if region is None or r.region == region]

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        """Return one snapshot. Raises :class:`~worker.errors.NotFound` when there is none."""
        data = await self._call("GET", f"/{snapshot_id}")
        item = Fields(self.name, data, "get-snapshot").required("snapshot", dict)
        return self._record(item, f"snapshot {snapshot_id}")

    async def create_snapshot(
        self, name: str, region: str, size_gib: int, url: str, os_type: str | None = None
    ) -> SnapshotRecord:
        """Create a snapshot from a raw or raw+zstd image at ``url`` (``POST``, HTTP 201); it
        is ``creating`` until Genesis has read it.

        Parameters:
          name, region: The snapshot's.
          size_gib: The uncompressed image's size in GiB, rounded up (at least 1).
          url: Where Genesis reads the image: a presigned URL is a credential, sent here and
            nowhere else (an error message that quotes it has it cut out).
          os_type: ``linux`` or ``windows``, if given.

        Raises:
          ApiError: A subclass naming what went wrong (never the URL).
        """
        body: dict[str, Any] = {"name": name, "region": region, "size": size_gib, "url": url}
        if os_type is not None:
            body["os_type"] = os_type
        try:
            data = await self._call("POST", "", body=body)
        except ApiError as error:
            error.message = _without(error.message, url)
            error.args = (error.message,)
            raise
        item = Fields(self.name, data, "create-snapshot").required("snapshot", dict)
        return self._record(item, "the snapshot created")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete one snapshot (the API answers 204 at once; the deletion goes on behind)."""
        await self._call("DELETE", f"/{snapshot_id}")

    def _record(self, item: Any, what: str) -> SnapshotRecord:
        fields = Fields(self.name, item, what)
        status = fields.required("status", str)
        return SnapshotRecord(
            provider=self.name,
            region=fields.text("region"),
            id=fields.text("id"),
            name=fields.optional("name", str) or "",
            status=normalise_status(status, STATUS_MAP),
            raw_status=status,
            size_bytes=fields.size("size", GiB),
            source_id=fields.optional("resource_id", str) or None,
            created_at=fields.timestamp("created_at"),
            raw=item,
        )


def _without(text: str, url: str) -> str:
    """``text`` with ``url`` (and its query string, the signature) cut out."""
    query = url.partition("?")[2]
    for secret in (url, query):
        if secret:
            text = text.replace(secret, "<presigned URL>")
    return text
