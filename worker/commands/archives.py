"""``snaparchive archives list``: every archive in the bucket, read from its manifest.

Archives of snapshots, instances and even zones that are gone are listed too: that is when a
disaster-recovery runbook needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.catalog import list_archives
from worker.settings import load
from worker.units import format_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="archives_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every archive in the bucket")
    listing.add_argument("--zone", type=types.zone, help="only this zone")
    listing.add_argument("--instance", type=types.snapshot_id, metavar="ID", help="one instance")
    listing.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


async def _list(args: argparse.Namespace) -> int:
    settings = load()
    async with ArchiveStore(settings.s3) as store:
        entries = await list_archives(store, zone=args.zone, instance_id=args.instance)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    print(f"{'ZONE':<10} {'INSTANCE':<36} {'SNAPSHOT':<36} {'TAKEN':<20} {'SIZE':>10}  POLICY")
    for e in entries:
        taken = e.created_at.strftime("%Y-%m-%d %H:%M") if e.created_at else "-"
        print(
            f"{e.zone:<10} {e.instance_id or '-':<36} {e.snapshot_id:<36} {taken:<20} "
            f"{format_size(e.manifest.size):>10}  {e.manifest.policy or '-'}"
        )
    return 0
