"""Retention of a policy's archives: ``snaparchive forget`` and the last step of a backup.

Which archives a policy judges: those in its zone that it made (the manifest names the
policy) or that are of one of its instances. :func:`worker.retention.plan` decides, by
restic's ``forget`` rules; removal goes through :func:`worker.catalog.remove_archive`
(manifest first). Objects a removal cut short left behind are removed on the next run.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from worker.archive import ArchiveStore
from worker.catalog import PROVIDER, ArchiveEntry, list_archives, remove_archive
from worker.jobstore import JobStore
from worker.orphans import find_orphans, remove_orphan
from worker.policy import Policy
from worker.retention import Candidate, Decision, plan


@dataclass(frozen=True)
class Judged:
    """One archive and what retention decided for it."""

    entry: ArchiveEntry
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        """The ``forget --json`` object: zone, instance_id, snapshot_id, created_at,
        manifest, action, reasons."""
        return {**self.decision.as_dict(), "manifest": self.entry.manifest_key}


def owned_by(
    policy: Policy, entries: list[ArchiveEntry], instances: Collection[str]
) -> list[ArchiveEntry]:
    """The archives of ``entries`` a policy owns: those that name it, and those of
    ``instances`` (its instances now) in its zone."""
    return [
        e
        for e in entries
        if e.zone == policy.zone
        and (e.manifest.policy == policy.name or (e.instance_id or "") in instances)
    ]


def judged_archives(
    policy: Policy, entries: list[ArchiveEntry], instances: Collection[str]
) -> list[Judged]:
    """Apply ``policy``'s retention to the archives of ``entries`` it owns
    (:func:`owned_by`)."""
    mine = owned_by(policy, entries, instances)
    candidates = [Candidate(e.zone, e.instance_id, e.snapshot_id, e.moment, e) for e in mine]
    return [Judged(d.candidate.payload, d) for d in plan(candidates, policy.keep)]


async def forget(
    store: ArchiveStore,
    jobs: JobStore | None,
    policy: Policy,
    instances: Collection[str],
    *,
    only_instance: str | None = None,
    dry_run: bool = False,
) -> list[Judged]:
    """Judge a policy's archives and remove those no rule keeps (unless ``dry_run``).

    Parameters:
      store: The archive store.
      jobs: The job store (orphan clean-up skips running jobs); ``None`` if unreachable.
      policy: The policy.
      instances: Its instances' ids now (resolved from ids and labels).
      only_instance: Judge that instance's archives only (a backup's last step).
      dry_run: Decide, remove nothing.

    Returns:
      Every judged archive with its decision.
    """
    entries = await list_archives(store, zone=policy.zone, instance_id=only_instance)
    judged = judged_archives(policy, entries, instances)
    if dry_run:
        return judged
    for item in judged:
        if not item.decision.keep:
            await remove_archive(store, item.entry)
    # What a removal cut short (objects without their manifest) goes on a later run.
    for orphan in await find_orphans(store, jobs, under=f"{PROVIDER}/{policy.zone}/"):
        await remove_orphan(store, orphan)
    return judged
