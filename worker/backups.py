"""The records of backup runs: one document per run and one per instance of a run.

A run of a policy (by hand, or by the scheduler for one slot) snapshots, archives, rotates
and forgets for each of the policy's instances, each on its own: one instance failing does
not stop the others. The job store holds, as documents (:class:`~worker.jobstore.JobStore`):

- ``backup-run/{run_id}``: the policy as it was when the run began, its instances, the time;
- ``backup/{run_id}/{instance_id}``: where that instance's backup stands (:class:`InstanceRun`);
- ``taken/{policy}/{snapshot_id}``: the snapshots the policy took (only those are rotated).

Run ids are the scheduler's slot keys (``web@2026-12-01T03:00Z``) or ``web@manual-...``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.duration import Duration
from worker.exoscale import ExoscaleClient
from worker.jobstore import JobStore
from worker.policy import KeepRules, Policy

RUN, INSTANCE, TAKEN = "backup-run", "backup", "taken"

#: Where an instance's backup stands; the last two are final.
QUEUED, SNAPSHOTTING, ARCHIVING, DONE, FAILED = (
    "queued",
    "snapshotting",
    "archiving",
    "done",
    "failed",
)
FINAL = (DONE, FAILED)


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The parts of a policy a run needs, as JSON (workers need no policy file)."""
    return {
        "name": policy.name,
        "zone": policy.zone,
        "schedule": policy.schedule,
        "snapshots_keep": policy.snapshots_keep,
        "keep": policy.keep.as_dict(),
        "instances": list(policy.instances),
        "labels": [list(pair) for pair in policy.labels],
    }


def policy_from_json(data: dict[str, Any]) -> Policy:
    """Rebuild what :func:`policy_to_json` wrote."""
    keep = dict(data["keep"])
    within = keep.pop("within", None)
    return Policy(
        name=data["name"],
        zone=data["zone"],
        schedule=data["schedule"],
        snapshots_keep=int(data["snapshots_keep"]),
        keep=KeepRules(**keep, within=Duration.parse(within) if within else None),
        instances=tuple(data["instances"]),
        labels=tuple((k, v) for k, v in data["labels"]),
    )


@dataclass
class InstanceRun:
    """One instance's backup in a run (the ``backup --json`` instance object, and more).

    Attributes:
      instance_id: The instance.
      status: queued, snapshotting, archiving, done or failed.
      snapshot_id: The snapshot the run took, once it exists.
      operation_id: The create-snapshot operation waited for.
      wait_started_at: When that wait began (UNIX time).
      manifest, md5: The verified archive, once done.
      error: Why it failed, in one line.
      updated_at: UNIX time of the last change.
    """

    instance_id: str
    status: str = QUEUED
    snapshot_id: str | None = None
    operation_id: str | None = None
    wait_started_at: float | None = None
    manifest: str | None = None
    md5: str | None = None
    error: str | None = None
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceRun:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> dict[str, Any]:
        """The ``backup --json`` object of this instance."""
        keys = ("instance_id", "snapshot_id", "status", "manifest", "md5", "error")
        return {k: getattr(self, k) for k in keys}


def manual_run_id(policy: str, now: datetime | None = None) -> str:
    """The run id of a run started by hand: ``web@manual-20261201T101500Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{policy}@manual-{moment:%Y%m%dT%H%M%S}Z"


async def start_run(
    store: JobStore, run_id: str, policy: Policy, instances: list[str], trigger: str
) -> None:
    """Record a run and a queued backup per instance (before any message is sent)."""
    await store.save_doc(
        RUN,
        run_id,
        {
            "policy": policy_to_json(policy),
            "instances": instances,
            "trigger": trigger,
            "started_at": time.time(),
        },
    )
    for instance_id in instances:
        await save_instance(store, run_id, InstanceRun(instance_id))


async def load_policy(store: JobStore, run_id: str) -> Policy | None:
    """The policy of a run, as it was when the run began."""
    run = await store.load_doc(RUN, run_id)
    return policy_from_json(run["policy"]) if run is not None else None


async def load_instance(store: JobStore, run_id: str, instance_id: str) -> InstanceRun | None:
    data = await store.load_doc(INSTANCE, f"{run_id}/{instance_id}")
    return InstanceRun.from_json(data) if data is not None else None


async def save_instance(store: JobStore, run_id: str, state: InstanceRun) -> None:
    state.updated_at = time.time()
    await store.save_doc(INSTANCE, f"{run_id}/{state.instance_id}", state.to_json())


async def run_instances(store: JobStore, run_id: str) -> list[InstanceRun]:
    """Every instance's backup in a run, in the order the run listed them."""
    return [InstanceRun.from_json(d) for _, d in await store.list_docs(INSTANCE, f"{run_id}/")]


async def runs_of(store: JobStore, policy: str) -> list[tuple[str, dict[str, Any]]]:
    """``(run_id, run)`` of every recorded run of ``policy``, oldest first."""
    return await store.list_docs(RUN, f"{policy}@")


async def record_taken(
    store: JobStore, policy: str, zone: str, instance_id: str, snapshot_id: str
) -> None:
    """Remember that ``policy`` took ``snapshot_id``: only such snapshots are ever rotated."""
    await store.save_doc(
        TAKEN,
        f"{policy}/{snapshot_id}",
        {"zone": zone, "instance_id": instance_id, "snapshot_id": snapshot_id},
    )


async def taken_by(store: JobStore, policy: str) -> set[str]:
    """The ids of the snapshots ``policy`` took (that are still remembered)."""
    return {d["snapshot_id"] for _, d in await store.list_docs(TAKEN, f"{policy}/")}


async def resolve_instances(client: ExoscaleClient, policy: Policy) -> list[str]:
    """The ids of the instances a policy covers now: those it names, and those of its zone
    carrying all its labels. Named instances need not exist any more (their archives
    still count; a backup of one fails on its own)."""
    found = list(policy.instances)
    if policy.labels:
        for instance in await client.list_instances(policy.zone, labels=policy.label_map):
            if instance.id not in found:
                found.append(instance.id)
    return found


async def begin_run(
    store: JobStore,
    client: ExoscaleClient,
    policy: Policy,
    run_id: str,
    trigger: str,
    launch: Callable[[str, str, str], Awaitable[None]],
) -> list[str]:
    """Start a backup run of ``policy``: record it, then launch each instance's backup.

    Returns:
      The instances it covers (none: nothing was launched).
    """
    instances = await resolve_instances(client, policy)
    await start_run(store, run_id, policy, instances, trigger)
    for instance_id in instances:
        await launch("backup_snapshot", run_id, instance_id)
    return instances

