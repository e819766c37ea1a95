"""``snaparchive forget``: apply the policies' retention to their archives."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from worker.archive import ArchiveStore
from worker.backups import resolve_instances
from worker.commands.policy_args import add_policies_argument, load_policies
from worker.exoscale import ExoscaleClient
from worker.forget import forget
from worker.jobstore import JobStore, RedisJobStore
from worker.settings import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policies_argument(parser)
    parser.add_argument("--policy", metavar="NAME", help="one policy (default: all of them)")
    parser.add_argument("--dry-run", action="store_true", help="decide, remove nothing")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_forget(args))


async def _forget(args: argparse.Namespace) -> int:
    policies = load_policies(args)
    chosen = [policies.get(args.policy)] if args.policy else list(policies.policies)
    settings = load()
    settings.exoscale.require_credentials()
    jobs: JobStore | None = RedisJobStore.for_settings(settings)
    assert jobs is not None
    if not await jobs.ping():
        await jobs.close()
        jobs = None  # orphan clean-up then relies on its age guard alone
    rows: list[dict[str, Any]] = []
    try:
        async with ExoscaleClient(settings.exoscale) as client, ArchiveStore(settings.s3) as store:
            for policy in chosen:
                instances = await resolve_instances(client, policy)
                judged = await forget(store, jobs, policy, instances, dry_run=args.dry_run)
                rows += [item.to_json() for item in judged]
    finally:
        if jobs is not None:
            await jobs.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for row in rows:
        action = row["action"] if row["action"] == "keep" else verb
        reasons = ", ".join(row["reasons"])
        print(
            f"{action:<12} {row['zone']:<10} {row['instance_id'] or '-':<36} "
            f"{row['snapshot_id']:<36} {row['created_at']}  {reasons}"
        )
    removed = sum(1 for row in rows if row["action"] == "remove")
    print(f"{len(rows)} archive(s), {removed} {verb}")
    return 0
