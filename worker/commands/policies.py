"""``snaparchive policies check``: the policy file, checked, with each policy's instances,
next runs and retention."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from worker.backups import resolve_instances
from worker.commands.policy_args import add_policies_argument, load_policies
from worker.errors import ApiError, describe
from worker.exoscale import ExoscaleClient
from worker.settings import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="policies_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="check the file; show instances, runs, retention")
    add_policies_argument(check)
    check.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_check(args))


async def _check(args: argparse.Namespace) -> int:
    policies = load_policies(args)
    settings = load()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    client = ExoscaleClient(settings.exoscale) if settings.exoscale.key else None
    try:
        for policy in policies.policies:
            row: dict[str, Any] = {
                "name": policy.name,
                "zone": policy.zone,
                "schedule": policy.schedule,
                "next_runs": [t.isoformat().replace("+00:00", "Z") for t in policy.next_runs(now)],
                "snapshots_keep": policy.snapshots_keep,
                "keep": policy.keep.as_dict(),
                "retention": policy.keep.describe(),
            }
            if client is None:
                row["instances"], row["instances_error"] = (
                    list(policy.instances),
                    ("EXOSCALE_API_KEY is not set: labels not resolved"),
                )
            else:
                try:
                    row["instances"] = await resolve_instances(client, policy)
                except ApiError as error:
                    row["instances"] = list(policy.instances)
                    row["instances_error"] = describe(error)
            rows.append(row)
    finally:
        if client is not None:
            await client.close()
    if args.json:
        print(json.dumps({"file": policies.path, "policies": rows}, indent=2))
        return 0
    print(f"{policies.path}: {len(rows)} polic{'y' if len(rows) == 1 else 'ies'}, valid")
    for row in rows:
        print(f'\n{row["name"]}  (zone {row["zone"]}, schedule "{row["schedule"]}" UTC)')
        instances = ", ".join(row["instances"]) or "none"
        print(f"  instances:  {instances}")
        if "instances_error" in row:
            print(f"              ({row['instances_error']})")
        print(f"  next runs:  {', '.join(row['next_runs'])}")
        print(f"  snapshots:  keep the newest {row['snapshots_keep']} once archived")
        print(f"  archives:   {row['retention']}")
    return 0
