"""What every provider adapter shares: the common snapshot record and the adapter interface.

Each cloud names its snapshot states differently; :func:`normalise_status` maps them onto
one small set (:data:`STATUSES`) so an operator can read one column across clouds, while
``raw_status`` keeps the provider's own word. Sizes are always bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from worker.errors import BadResponse, ConfigError
from worker.retry import RetryPolicy

#: The largest size believed, in bytes (8 EiB): more is a malformed answer, not a disk.
MAX_SIZE = (1 << 63) - 1

#: The common statuses: usable, being made, being exported, going away, broken, anything else.
STATUSES = ("ready", "creating", "exporting", "deleting", "error", "other")


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


class Fields:
    """Reads one API object, raising :class:`BadResponse` naming the provider and the object
    when a field is missing or of the wrong type, so a malformed answer is a clear error.

    Parameters:
      provider: The provider name, first word of every error.
      data: The decoded JSON object.
      what: How to name the object in errors (``snapshot 3 of page 2``).
    """

    def __init__(self, provider: str, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise BadResponse(f"{provider}: {what} is {_kind(data)}, not an object")
        self.provider = provider
        self.data: dict[str, Any] = data
        self.what = what

    def required(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """Return field ``name``, which must be present and of type ``kind``."""
        if name not in self.data or self.data[name] is None:
            raise BadResponse(f"{self.provider}: {self.what} has no {name!r}")
        return self._typed(name, kind)

    def optional(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """Return field ``name`` or ``None`` when absent or null; a wrong type is an error."""
        if self.data.get(name) is None:
            return None
        return self._typed(name, kind)

    def text(self, name: str) -> str:
        """Return field ``name``, which must be a non-empty string (an id, a region)."""
        value = self.required(name, str)
        if not value:
            raise BadResponse(f"{self.provider}: {self.what} has an empty {name!r}")
        return value

    def size(self, name: str, unit: int = 1) -> int | None:
        """Return field ``name``, a whole number of ``unit`` bytes, as bytes (``None`` when
        absent or null). Negative sizes and sizes past :data:`MAX_SIZE` bytes are errors."""
        value = self.optional(name, int)
        if value is None:
            return None
        if value < 0:
            raise BadResponse(f"{self.provider}: {self.what} has a negative {name!r}")
        if value * unit > MAX_SIZE:
            raise BadResponse(f"{self.provider}: {self.what} has {name!r} out of range")
        return value * unit

    def timestamp(self, name: str) -> datetime | None:
        """Return field ``name`` as an ISO 8601 date-time (naive taken as UTC), or ``None``."""
        text = self.optional(name, str)
        if not text:
            return None
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise BadResponse(
                f"{self.provider}: {self.what} has {name!r} {text!r}, not an ISO 8601 date-time"
            ) from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def _typed(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = self.data[name]
        # bool is an int in Python, but never a size or an id in these APIs.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise BadResponse(f"{self.provider}: {self.what} has {name!r} of type {_kind(value)}")
        return value


def items_of(provider: str, data: Any, key: str | None, what: str) -> list[Any]:
    """Return the list at ``data[key]`` (or ``data`` itself when ``key`` is ``None``).

    Raises:
      BadResponse: naming ``provider`` and ``what`` when it is not a list.
    """
    found = data
    if key is not None:
        if not isinstance(data, dict):
            raise BadResponse(f"{provider}: {what} is {_kind(data)}, not an object")
        found = data.get(key)
    if not isinstance(found, list):
        where = f"{what}'s {key!r}" if key else what
        raise BadResponse(f"{provider}: {where} is {_kind(found)}, not a list")
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
    }
    return kinds.get(type(value), f"a {type(value).__name__}")


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
