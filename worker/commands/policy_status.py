"""Where each backup policy stands, for ``snaparchive status``: its last run and result, its
next run, and per instance the recovery point (the age of its newest verified archive)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from worker import backups
from worker.archive import ArchiveStore
from worker.catalog import list_archives
from worker.jobstore import JobStore
from worker.policy import Policy, PolicyFile
from worker.scrub import last_verification


async def _last_run(store: JobStore, policy: Policy) -> dict[str, Any]:
    runs = await backups.runs_of(store, policy.name)
    if not runs:
        return {"last_run": None, "last_run_at": None, "result": None}
    run_id, run = runs[-1]
    states = await backups.run_instances(store, run_id)
    if "error" in run:
        result = f"failed to start: {run['error']}"
    elif any(s.status not in backups.FINAL for s in states):
        result = "running"
    else:
        failed = [s.instance_id for s in states if s.status != backups.DONE]
        result = "ok" if states and not failed else f"{len(failed)} of {len(states)} failed"
    started = run.get("started_at")
    return {
        "last_run": run_id,
        "last_run_at": _iso(datetime.fromtimestamp(started, UTC)) if started else None,
        "result": result,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


async def policy_rows(
    store: JobStore, archive: ArchiveStore, policies: PolicyFile
) -> list[dict[str, Any]]:
    """One row per policy (see the module docstring), recovery points read from the bucket."""
    now = datetime.now(UTC)
    rows = []
    for policy in policies.policies:
        entries = [
            e
            for e in await list_archives(archive, zone=policy.zone)
            if e.manifest.policy == policy.name or (e.instance_id or "") in policy.instances
        ]
        newest: dict[str, Any] = {}
        for entry in entries:  # oldest first: the last one of each instance wins
            if entry.instance_id is not None:
                newest[entry.instance_id] = entry
        instances = []
        for instance_id, entry in sorted(newest.items()):
            checked = await last_verification(archive, entry)
            instances.append(
                {
                    "instance_id": instance_id,
                    "snapshot_id": entry.snapshot_id,
                    "recovery_point": _iso(entry.moment),
                    "age_seconds": round(time.time() - entry.moment.timestamp()),
                    "verified": None if checked is None else bool(checked.get("ok")),
                    "verified_at": None if checked is None else checked.get("checked_at"),
                }
            )
        rows.append(
            {
                "policy": policy.name,
                "zone": policy.zone,
                **await _last_run(store, policy),
                "next_run": _iso(policy.next_runs(now, 1)[0]),
                "instances": instances,
            }
        )
    return rows
