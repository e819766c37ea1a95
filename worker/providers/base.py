"""What every provider adapter shares: the common snapshot record and the adapter interface.
(Adapters read their APIs' answers with :class:`worker.fields.Fields`.)

Each cloud names its snapshot states differently; :func:`normalise_status` maps them onto
one small set (:data:`STATUSES`) so an operator can read one column across clouds, while
``raw_status`` keeps the provider's own word. Sizes are always bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.retry import RetryPolicy

#: The common statuses: usable, being made, being exported, going away, broken, anything else.
STATUSES = ("ready", "creating", "exporting", "deleting", "error", "other")


def endpoint_from_env(env: Mapping[str, str], name: str, default: str) -> str:
    """Return the API endpoint in variable ``name`` (``default`` when unset), without a
    trailing slash.

    Raises:
      ConfigError: It is not an ``http://`` or ``https://`` URL with a host, naming ``name``.
    """
    value = (env.get(name) or default).rstrip("/")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: not an http(s) URL: {value!r}")
    return value


class NotARegion(ConfigError):
    """The region asked for cannot be a region of this provider (an Exoscale zone name for
    Gcore, say). The inventory skips such a provider unless it was asked for by name."""


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot, in the same shape whatever cloud it lives in.

    Parameters:
      provider: ``exoscale``, ``genesiscloud``, ``gcore`` or ``instavm``.
      region: The zone or region it lives in, as the provider names it in archive keys.
      id: The provider's snapshot id.
      name: Its name (``""`` when it has none).
      status: One of :data:`STATUSES`.
      raw_status: The provider's own status word (``None`` when it sent none).
      size_bytes: Size in bytes, ``None`` when the provider did not say.
      source_id: The instance, volume or VM it was taken from, if known.
      created_at: When it was made (timezone-aware), if known.
      raw: The provider's record as received (never holding credentials or presigned URLs).
    """

    provider: str
    region: str
    id: str
    name: str
    status: str
    raw_status: str | None
    size_bytes: int | None
    source_id: str | None
    created_at: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def archive_key(self) -> tuple[str, str, str]:
        """``(provider, region, id)``: how the archive store names this snapshot's archive."""
        return (self.provider, self.region, self.id)

    def to_json(self, archived: bool | None) -> dict[str, Any]:
        """Return the record as a JSON object, with ``archived`` (``None``: unknown)."""
        return {
            "provider": self.provider,
            "region": self.region,
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "raw_status": self.raw_status,
            "size_bytes": self.size_bytes,
            "source_id": self.source_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "archived": archived,
            "raw": self.raw,
        }


def normalise_status(raw: str | None, mapping: Mapping[str, str]) -> str:
    """Return the common status of the provider status ``raw`` (``other`` when unknown).

    Parameters:
      raw: The provider's status word; compared case-insensitively.
      mapping: The provider's words (lower case) to :data:`STATUSES`.
    """
    if raw is None:
        return "other"
    return mapping.get(raw.lower(), "other")


class Provider(ABC):
    """A cloud's snapshot API, as the inventory uses it. An async context manager.

    Class attributes:
      name: The provider's name in records, archive keys and ``--provider``.
      credential: The environment variable without which the provider is skipped.
    """

    name: ClassVar[str]
    credential: ClassVar[str]

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @classmethod
    @abstractmethod
    def from_env(cls, env: Mapping[str, str], *, retry: RetryPolicy | None = None) -> Provider:
        """Make the adapter from environment variables (``credential`` is set).

        Parameters:
          env: The environment.
          retry: Retry policy of its API calls (default :class:`RetryPolicy`).

        Raises:
          ConfigError: A variable is missing or malformed (the message names it).
        """

    @abstractmethod
    async def close(self) -> None:
        """Release the HTTP session."""

    def regions(self, asked: str | None) -> Sequence[str | None]:
        """Return the regions to list, one call of :meth:`list_snapshots` each.

        Parameters:
          asked: The region the operator asked for, or ``None`` for all.

        Raises:
          NotARegion: ``asked`` cannot be one of this provider's regions.
        """
        return [asked]

    @abstractmethod
    async def list_snapshots(self, region: str | None = None) -> list[SnapshotRecord]:
        """Return the snapshots in ``region`` (``None``: every region the call can see).

        Raises:
          worker.errors.ApiError: The API failed or answered something malformed; the
            message starts with the provider's name.
        """
