"""``snaparchive status``: where archive and restore jobs stand, from the shared job store."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.commands.follow import outcome_json
from worker.commands.policy_args import add_policies_argument, load_policies
from worker.commands.policy_status import policy_rows
from worker.jobstore import GENESIS, JobRecord, JobStore, RedisJobStore, Step, find_jobs
from worker.policy import policies_path
from worker.settings import Settings, load
from worker.units import format_age, format_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", nargs="?", type=types.snapshot_id, help="one snapshot")
    parser.add_argument("--zone", type=types.zone, help="only this zone")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_policies_argument(parser)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args))


def _progress(record: JobRecord) -> str:
    if record.step == Step.DONE and record.result:
        return format_size(record.result["size"])
    if record.bytes_total:
        share = record.bytes_done / record.bytes_total
        return f"{share:.1%} of {format_size(record.bytes_total)}"
    return "-"


def _detail(record: JobRecord) -> str:
    if record.error:
        return record.error
    if record.result and "template_id" in record.result:
        result = record.result
        return f"template {result['name']!r} ({result['template_id']}) in {result['zone']}"
    if record.result and record.kind == GENESIS:
        result = record.result
        return (
            f"Genesis snapshot {result['name']!r} ({result['snapshot_id'] or 'not asked yet'}) "
            f"in {result['region']}: {result['status']}"
        )
    if record.result:
        return f"s3://{record.result['bucket']}/{record.result['manifest']}"
    if record.restore and record.active:
        restore = record.restore
        return f"as template {restore.get('name')!r} in {restore.get('target_zone')}"
    if record.cancel_requested:
        return "cancel requested"
    return ""


async def _policies(args: argparse.Namespace, settings: Settings, store: JobStore) -> list[Any]:
    """The policies' rows, when there is a policy file (named, or found by default)."""
    path = policies_path(os.environ, args.policies)
    if args.policies is None and not path.exists():
        return []
    async with ArchiveStore(settings.s3) as archive:
        return await policy_rows(store, archive, load_policies(args))


def _print_policies(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'POLICY':<16} {'LAST RUN':<22} {'RESULT':<18} {'NEXT RUN':<22} RECOVERY POINTS")
    for row in rows:
        points = ", ".join(
            f"{i['instance_id'][:8]} {format_age(i['age_seconds'])}" for i in row["instances"]
        )
        print(
            f"{row['policy']:<16} {row['last_run_at'] or '-':<22} {row['result'] or '-':<18} "
            f"{row['next_run']:<22} {points or '-'}"
        )


async def _status(args: argparse.Namespace) -> int:
    settings = load()
    store = RedisJobStore.for_settings(settings)
    policies: list[Any] = []
    try:
        if args.snapshot_id:
            records = await find_jobs(store, args.snapshot_id, args.zone)
        else:
            records = [r for r in await store.list(limit=1000) if args.zone in (None, r.zone)]
            policies = await _policies(args, settings, store)
    finally:
        await store.close()
    if args.json:
        rows = []
        for record in records:
            row = outcome_json(record)
            row.update(
                kind=record.kind,
                bytes_done=record.bytes_done,
                bytes_total=record.bytes_total,
                updated_at=record.updated_at,
            )
            rows.append(row)
        if args.snapshot_id:
            print(json.dumps(rows[0] if rows else rows, indent=2))
        else:
            print(json.dumps({"jobs": rows, "policies": policies}, indent=2))
    else:
        print(
            f"{'ZONE':<10} {'SNAPSHOT':<36} {'KIND':<8} {'STEP':<15} {'PROGRESS':<22} "
            f"{'AGE':>6}  DETAIL"
        )
        for r in records:
            age = f"{(time.time() - r.updated_at) / 60:.0f}m"
            print(
                f"{r.zone:<10} {r.snapshot_id:<36} {r.kind:<8} {r.step:<15} {_progress(r):<22} "
                f"{age:>6}  {_detail(r)}"
            )
        if policies:
            _print_policies(policies)
    if args.snapshot_id and not records:
        print(f"snaparchive: error: no job for snapshot {args.snapshot_id}", file=sys.stderr)
        return 1
    return 0
