"""One inventory across every configured cloud, with archive coverage.

:func:`collect` asks every provider (each Exoscale zone on its own) at once. A provider
without its credential variable is skipped with a note (an error when asked for by name);
one whose variables are malformed stops the inventory with a :class:`ConfigError` naming
the variable; a provider that fails to answer becomes a :class:`Failure` while the others'
records are kept; the archive manifests say which
records are archived, or coverage is unknown (``None``) with a note saying why. A
manifest counts only when it reads back valid; invalid ones are a note.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.archive import ArchiveStore
from worker.errors import ConfigError, SnaparchiveError
from worker.providers.base import NotARegion, Provider, SnapshotRecord
from worker.providers.exoscale import Exoscale
from worker.providers.gcore import Gcore
from worker.providers.genesiscloud import GenesisCloud
from worker.providers.instavm import InstaVM
from worker.retry import RetryPolicy
from worker.settings import S3Settings

log = logging.getLogger(__name__)

#: Every provider adapter, by the name ``--provider`` takes.
PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls for cls in (Exoscale, GenesisCloud, Gcore, InstaVM)
}


_NEVER = datetime.min.replace(tzinfo=UTC)

#: Manifests read at once for coverage: each is read and checked, not just listed.
COVERAGE_READS = 8


class UsageError(ConfigError):
    """The request cannot be served as asked (a region a named provider does not have)."""


@dataclass(frozen=True)
class Failure:
    """A provider (or one of its regions, or the archive store) that did not answer.

    Parameters:
      source: The provider's name, or ``archive``.
      message: What went wrong, starting with the provider's name.
    """

    source: str
    message: str


@dataclass
class Inventory:
    """What :func:`collect` found.

    Parameters:
      records: Every snapshot found, sorted by provider, region, creation and id.
      archived: Keys ``(provider, region, id)`` with a verified archive; ``None`` when unknown.
      notes: Skipped providers and why coverage is unknown, one line each.
      failures: Providers or regions that failed.
    """

    records: list[SnapshotRecord] = field(default_factory=list)
    archived: set[tuple[str, str, str]] | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def is_archived(self, record: SnapshotRecord) -> bool | None:
        """Return whether ``record`` has a verified archive (``None``: unknown)."""
        return None if self.archived is None else record.archive_key in self.archived


async def collect(
    env: Mapping[str, str],
    *,
    providers: Sequence[str] | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
) -> Inventory:
    """List snapshots across providers and mark the archived ones.

    Parameters:
      env: The environment holding credentials, endpoints and ``SNAPARCHIVE_S3_*``.
      providers: Names from :data:`PROVIDERS` to ask (default: all of them).
      region: Only this region or zone, in each provider's own naming; a provider that
        cannot have it is skipped with a note (default: every region).
      retry: Retry policy of every API call (default :class:`RetryPolicy`).

    Raises:
      UsageError: ``region`` cannot be a region of a provider named in ``providers``.
      ConfigError: A configured provider's variables are malformed or incomplete, or one
        named in ``providers`` has no credential.
      KeyError: A name in ``providers`` is not in :data:`PROVIDERS`.
    """
    inventory = Inventory()
    calls: list[tuple[Provider, str | None]] = []
    opened: list[Provider] = []
    try:
        named = providers is not None
        for name in providers or PROVIDERS:
            adapter = await _open(PROVIDERS[name], env, region, named, retry, inventory)
            if adapter is not None:
                opened.append(adapter)
                calls.extend((adapter, r) for r in adapter.regions(region))
        coverage = asyncio.create_task(_coverage(env, inventory))
        listings = await asyncio.gather(*(_list(a, r, inventory) for a, r in calls))
        await coverage
    finally:
        for adapter in opened:
            await adapter.close()
    inventory.records = sorted((r for found in listings for r in found), key=_order)
    return inventory


async def _open(
    cls: type[Provider],
    env: Mapping[str, str],
    region: str | None,
    named: bool,
    retry: RetryPolicy | None,
    inventory: Inventory,
) -> Provider | None:
    """Return the adapter of ``cls``, or ``None`` after noting why it is skipped.

    Raises:
      ConfigError: Its variables are malformed or incomplete (naming the variable), or it
        was asked for by name (``named``) without its credential: a configuration error, not
        a provider that failed to answer.
      UsageError: It was asked for by name and cannot have ``region``.
    """
    if not env.get(cls.credential):
        if named:
            raise ConfigError(
                f"{cls.name}: asked for with --provider, but {cls.credential} is not set"
            )
        inventory.notes.append(f"{cls.name}: skipped, {cls.credential} is not set")
        return None
    try:
        adapter = cls.from_env(env, retry=retry)
    except ConfigError as exc:
        raise ConfigError(_named(cls.name, exc)) from None
    try:
        adapter.regions(region)
    except NotARegion as exc:
        await adapter.close()
        if named:
            raise UsageError(str(exc)) from None
        inventory.notes.append(f"{exc}; skipped")
        return None
    except ConfigError as exc:
        await adapter.close()
        raise ConfigError(_named(cls.name, exc)) from None
    return adapter


async def _list(
    adapter: Provider, region: str | None, inventory: Inventory
) -> list[SnapshotRecord]:
    try:
        return await adapter.list_snapshots(region)
    except SnaparchiveError as exc:
        inventory.failures.append(Failure(adapter.name, _named(adapter.name, exc)))
    except Exception as exc:
        # Whatever else an answer can cause (JSON nested past the recursion limit, ...)
        # is this provider's failure alone: one line, the others' rows still print.
        log.info("%s: listing failed", adapter.name, exc_info=True)
        inventory.failures.append(
            Failure(
                adapter.name,
                f"{adapter.name}: unexpected {type(exc).__name__} reading its answer "
                "(-v shows where)",
            )
        )
    return []


async def _coverage(env: Mapping[str, str], inventory: Inventory) -> None:
    try:
        s3 = S3Settings.from_env(env)
        if not s3.bucket:
            inventory.notes.append("archived: unknown, SNAPARCHIVE_S3_BUCKET is not set")
            return
        async with ArchiveStore(s3, max_workers=COVERAGE_READS) as store:
            scan = await store.scan_archives(COVERAGE_READS)
        inventory.archived = scan.archived
        if scan.refused:
            more = f" (and {len(scan.refused) - 1} more)" if len(scan.refused) > 1 else ""
            inventory.notes.append(f"archive: not counted as archived: {scan.refused[0]}{more}")
    except SnaparchiveError as exc:
        inventory.failures.append(Failure("archive", _named("archive", exc)))


def _named(source: str, exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(f"{source}:") else f"{source}: {text}"


def _order(record: SnapshotRecord) -> tuple[str, str, datetime, str]:
    return (record.provider, record.region, record.created_at or _NEVER, record.id)
