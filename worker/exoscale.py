"""The async client of the Exoscale API v2 calls snaparchive makes.

Every request is signed with EXO2-HMAC-SHA256 (re-signed on each retry), sent
through :class:`~worker.http.JsonApi` (timeouts, retries of 429/5xx/resets with
``Retry-After`` honoured, typed errors) and decoded into :mod:`worker.models`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from worker import errors, signing
from worker.errors import (
    BadResponse,
    ConfigError,
    OperationFailed,
    OperationTimeout,
    QuotaExceeded,
)
from worker.http import DEFAULT_TIMEOUT, JsonApi
from worker.models import (
    Instance,
    Operation,
    Quota,
    Snapshot,
    Template,
    TemplateSpec,
    Zone,
)
from worker.polling import poll_interval
from worker.retry import RetryPolicy
from worker.settings import ExoscaleSettings

log = logging.getLogger(__name__)

#: The zone whose endpoint answers zone-less calls such as list-zones.
DEFAULT_ZONE = "ch-gva-2"


def _limit(quota: Quota) -> str:
    return "unlimited" if quota.unlimited else str(quota.limit)


@dataclass(frozen=True)
class OperationCheck:
    """One look at an operation: the operation, and when to look again if it is still pending."""

    operation: Operation
    next_check_in: float | None


class ExoscaleClient:
    """Calls the Exoscale API v2 of any zone.

    Parameters:
      settings: Endpoint template and credentials (``EXOSCALE_API_*``).
      retry: Retry policy for 429, 5xx and connection failures (default :class:`RetryPolicy`).
      timeout: Per-request timeouts (default: 10 s to connect, 60 s in all).
      session: An aiohttp session to share; by default the client makes and closes its own.
    """

    def __init__(
        self,
        settings: ExoscaleSettings,
        *,
        retry: RetryPolicy | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        settings.require_credentials()
        self.settings = settings
        self.api = JsonApi("exoscale", retry=retry, timeout=timeout, session=session)
        # The one zone an endpoint without {zone} serves: the first one called.
        self._fixed_zone: str | None = None
        if not settings.zoned:
            log.warning(
                "EXOSCALE_API_ENDPOINT has no {zone}: every call goes to it, whatever the zone; "
                "calls for a second zone are refused"
            )

    async def __aenter__(self) -> ExoscaleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.api.close()

    def _sign(self, method: str, url: URL, body: bytes) -> Mapping[str, str]:
        query = [(name, value) for name, value in url.query.items()]
        header = signing.authorization(
            self.settings.key, self.settings.secret, method, url.raw_path, body, query
        )
        return {"Authorization": header}

    def _url(self, zone: str | None) -> str:
        """The API base URL for ``zone`` (``None``: a zone-less call).

        Raises:
          ConfigError: The endpoint has no ``{zone}`` and served another zone already: its
            answers would be that zone's.
        """
        if zone is not None and not self.settings.zoned:
            if self._fixed_zone is None:
                self._fixed_zone = zone
            elif zone != self._fixed_zone:
                raise ConfigError(
                    f"EXOSCALE_API_ENDPOINT has no {{zone}} and serves {self._fixed_zone}: "
                    f"refusing to send the calls of {zone} there (put {{zone}} in it)"
                )
        return self.settings.url(zone or DEFAULT_ZONE)

    async def _call(
        self,
        method: str,
        zone: str | None,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
    ) -> Any:
        url = self._url(zone) + path
        if query:
            url = str(URL(url).with_query(query))
        return await self.api.request_json(method, url, json_body=body, sign=self._sign)

    async def _list(
        self, operation: str, zone: str, path: str, query: Mapping[str, str] | None = None
    ) -> list[Any]:
        # list-snapshots returns {"snapshots": [...]}, list-instances {"instances": [...]}, ...
        key = operation.removeprefix("list-")
        data = await self._call("GET", zone, path, query=query)
        items = data.get(key) if isinstance(data, dict) else None
        if items is None and isinstance(data, dict):
            items = []  # the API leaves the key out when there are none
        if not isinstance(items, list):
            raise BadResponse(f"exoscale: {operation} did not return a {key} list")
        return items

    # -- snapshots ------------------------------------------------------------------------

    async def list_snapshots(self, zone: str) -> list[Snapshot]:
        """Return every snapshot of ``zone``."""
        items = await self._list("list-snapshots", zone, "/snapshot")
        return [Snapshot.from_api(item) for item in items]

    async def get_snapshot(self, zone: str, snapshot_id: str) -> Snapshot:
        """Return one snapshot; its ``export`` holds a fresh presigned URL once exported."""
        return Snapshot.from_api(await self._call("GET", zone, f"/snapshot/{snapshot_id}"))

    async def export_snapshot(self, zone: str, snapshot_id: str) -> Operation:
        """Start exporting a snapshot to a downloadable file; returns the operation."""
        return Operation.from_api(await self._call("POST", zone, f"/snapshot/{snapshot_id}:export"))

    async def delete_snapshot(self, zone: str, snapshot_id: str) -> Operation:
        """Delete a snapshot; returns the operation (the snapshot is gone once it succeeds)."""
        return Operation.from_api(await self._call("DELETE", zone, f"/snapshot/{snapshot_id}"))

    async def create_snapshot(self, zone: str, instance_id: str) -> Operation:
        """Snapshot an instance's disk; the operation's reference is the new snapshot.

        Raises:
          QuotaExceeded: The organisation's snapshot quota is used up. Neither the status nor
            the message of that refusal is documented, so a 4xx refusal counts as one when
            the quota, read right after it, is used up, or when its message names the quota.
        """
        path = f"/instance/{instance_id}:create-snapshot"
        try:
            return Operation.from_api(await self._call("POST", zone, path))
        except (errors.AuthError, errors.Conflict, errors.BadRequest) as refused:
            quota: Quota | None
            try:
                quota = await self.get_quota(zone, "snapshot")
            except errors.ApiError:
                quota = None
            names_quota = "quota" in refused.message.lower()
            if not (quota is not None and quota.exhausted) and not names_quota:
                raise
            used = "" if quota is None else f" ({quota.usage} used, limit {_limit(quota)})"
            raise QuotaExceeded(
                f"exoscale: no snapshot of instance {instance_id} in {zone}: "
                f"the snapshot quota is used up{used}",
                quota,
                refused.status,
            ) from None

    # -- instances, templates, quotas, zones ----------------------------------------------

    async def list_instances(
        self, zone: str, labels: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Return the instances of ``zone``; with ``labels``, those carrying all of them.

        The labels are matched here, not by the API: its ``labels`` query parameter is an
        untyped string whose format the spec does not give.
        """
        wanted = dict(labels or {})
        items = await self._list("list-instances", zone, "/instance")
        instances = [Instance.from_api(item) for item in items]
        return [instance for instance in instances if instance.has_labels(wanted)]

    async def get_instance(self, zone: str, instance_id: str) -> Instance:
        """Return one instance (404: :class:`~worker.errors.NotFound`)."""
        return Instance.from_api(await self._call("GET", zone, f"/instance/{instance_id}"))

    async def get_template(self, zone: str, template_id: str) -> Template:
        """Return one template of ``zone`` (templates are per zone)."""
        return Template.from_api(await self._call("GET", zone, f"/template/{template_id}"))

    async def list_templates(
        self, zone: str, visibility: str = "private", family: str | None = None
    ) -> list[Template]:
        """Return the templates of ``zone`` of a ``visibility`` (default ``private``: ours)."""
        query = {"visibility": visibility} | ({"family": family} if family else {})
        items = await self._list("list-templates", zone, "/template", query)
        return [Template.from_api(item) for item in items]

    async def register_template(self, zone: str, spec: TemplateSpec) -> Operation:
        """Register a template in ``zone`` from an image URL; the operation's reference is the
        new template once it succeeds (Exoscale reads the URL and checks its MD5 first)."""
        return Operation.from_api(await self._call("POST", zone, "/template", spec.to_api()))

    async def get_quota(self, zone: str, entity: str) -> Quota:
        """Return the organisation's quota of ``entity`` (like ``snapshot``), through the API
        of ``zone`` (quotas are not per zone)."""
        return Quota.from_api(await self._call("GET", zone, f"/quota/{entity}"), entity)

    async def list_zones(self) -> list[Zone]:
        data = await self._call("GET", None, "/zone")
        items = data.get("zones") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise BadResponse("exoscale: list-zones did not return a zones list")
        return [Zone.from_api(item) for item in items]

    # -- operations -----------------------------------------------------------------------

    async def get_operation(self, zone: str, operation_id: str) -> Operation:
        return Operation.from_api(await self._call("GET", zone, f"/operation/{operation_id}"))

    async def check_operation(self, zone: str, operation_id: str, elapsed: float) -> OperationCheck:
        """Look at an operation once.

        Parameters:
          zone: The operation's zone.
          operation_id: Its id.
          elapsed: Seconds since the wait began; sets the next interval on the official schedule.

        Returns:
          The operation, with ``next_check_in`` seconds when it is still pending, else ``None``.

        Raises:
          OperationFailed: When it ended in ``failure`` or ``timeout`` (with the ``reason``).
        """
        operation = await self.get_operation(zone, operation_id)
        if operation.state in ("failure", "timeout"):
            raise OperationFailed(
                operation.id, operation.state, operation.reason, operation.message or ""
            )
        pending = operation.state == "pending"
        return OperationCheck(operation, poll_interval(elapsed) if pending else None)

    async def wait_operation(
        self, zone: str, operation_id: str, *, timeout: float = 3600.0
    ) -> Operation:
        """Poll an operation on the official schedule until it succeeds.

        Parameters:
          zone, operation_id: The operation.
          timeout: Seconds to wait at most (default one hour).

        Raises:
          OperationFailed: It ended in ``failure`` or ``timeout``.
          OperationTimeout: It was still pending after ``timeout`` seconds.
        """
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            check = await self.check_operation(zone, operation_id, elapsed)
            if check.next_check_in is None:
                return check.operation
            if elapsed + check.next_check_in > timeout:
                raise OperationTimeout(
                    f"exoscale: operation {operation_id} still pending after {elapsed:.0f}s"
                )
            await asyncio.sleep(check.next_check_in)
