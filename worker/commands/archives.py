"""``snaparchive archives list``: every archive in the bucket, read from its manifest.

Archives of snapshots, instances and even zones that are gone are listed too: that is when a
disaster-recovery runbook needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.catalog import list_archives
from worker.scrub import last_verification
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
        rows = [{**e.to_json(), **_verified(await last_verification(store, e))} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'ZONE':<10} {'INSTANCE':<36} {'SNAPSHOT':<36} {'TAKEN':<20} {'SIZE':>10}  "
        f"{'POLICY':<12} VERIFIED"
    )
    for e, row in zip(entries, rows, strict=True):
        taken = e.created_at.strftime("%Y-%m-%d %H:%M") if e.created_at else "-"
        checked = {True: "ok", False: "FAILED", None: "never"}[row["verified"]]
        if row["verified_at"]:
            checked += f" {row['verified_at']}"
        print(
            f"{e.zone:<10} {e.instance_id or '-':<36} {e.snapshot_id:<36} {taken:<20} "
            f"{format_size(e.manifest.size):>10}  {e.manifest.policy or '-':<12} {checked}"
        )
    return 0


def _verified(last: dict[str, Any] | None) -> dict[str, Any]:
    """The last scrub of an archive, as ``archives list`` shows it: ``verified`` (true, false,
    or null when never checked), ``verified_at``, ``verify_error``."""
    if last is None:
        return {"verified": None, "verified_at": None, "verify_error": None}
    return {
        "verified": bool(last.get("ok")),
        "verified_at": last.get("checked_at"),
        "verify_error": last.get("error"),
    }
