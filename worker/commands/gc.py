"""``snaparchive gc``: abort multipart uploads nobody will complete, and delete the objects
of archives that lost their manifest (see :mod:`worker.orphans`; the same guards apply).

Incomplete uploads are invisible but their parts are billed. An upload is abandoned when
no active job of the job store owns its snapshot (an archive, or a restore converting the
archive beside it, :mod:`jobs.genesis_steps`), nobody holds the transfer lease of either
(whatever the upload's age: a transfer is running), and it is older than ``--older-than``
hours: a guard for transfers the job store does not know, like
``archive --local`` runs that could not reach Redis. ``0`` drops the guard, for when no
such run can be going on.

Without a job store (``archive --local`` on a laptop, Redis down) gc works from the bucket
alone and says so: the age guard is then all that keeps it off running transfers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.jobstore import ARCHIVE, GENESIS, JobStore, RedisJobStore
from worker.orphans import find_orphans, remove_orphan
from worker.settings import load

#: Seconds to wait for the job store to answer before going by the bucket alone.
PING_TIMEOUT = 5.0

#: Why an upload is kept: its JSON ``reason`` and the text of the table.
KEPT = {
    "job_running": "kept: its job is running",
    "leased": "kept: leased by a transfer",
    "too_recent": "kept: too recent",
    "age_unknown": "kept: age unknown",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        type=types.non_negative_int,
        default=1,
        metavar="HOURS",
        help="only uploads started at least this many hours ago (default 1; 0: any)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, abort nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_gc(args.older_than * 3600, args.dry_run, args.json))


async def _answers(store: RedisJobStore) -> bool:
    try:
        return await asyncio.wait_for(store.ping(), PING_TIMEOUT)
    except TimeoutError:
        return False


async def _leased(owner: tuple[str, str], store: JobStore) -> bool:
    """Whether a transfer (an archive's, or a Genesis restore's conversion) holds the lease."""
    for kind in (ARCHIVE, GENESIS):
        if await store.lease_left(*owner, kind=kind) > 0:
            return True
    return False


async def _gc(min_age: float, dry_run: bool, as_json: bool) -> int:
    settings = load()
    settings.s3.require_bucket()
    archive = ArchiveStore(settings.s3)
    store = RedisJobStore.for_settings(settings)
    try:
        reachable = await _answers(store)
        if reachable:
            # Every kind: Genesis restores convert archives beside them (image.raw.zst).
            jobs = await store.list(limit=100_000)
            active = {(r.zone, r.snapshot_id) for r in jobs if r.active}
        else:
            active = set()
            guard = f"older than {min_age / 3600:g}h" if min_age else "of any age (--older-than 0)"
            print(
                "snaparchive: warning: the job store (SNAPARCHIVE_REDIS_URL) does not answer; "
                f"going by the bucket alone: uploads and objects without a manifest {guard} "
                "are taken as abandoned",
                file=sys.stderr,
            )
        uploads = await archive.list_open_uploads()
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for upload in uploads:
            # Keys are {prefix}{provider}/{zone}/{snapshot_id}/image...
            parts = upload.key[len(archive.prefix) :].split("/")
            owner = (parts[1], parts[2]) if len(parts) >= 4 else None
            age = (now - upload.initiated).total_seconds() if upload.initiated else None
            reason: str | None = None
            if owner in active:
                reason = "job_running"
            elif reachable and owner is not None and await _leased(owner, store):
                reason = "leased"
            elif min_age and age is None:
                reason = "age_unknown"
            elif min_age and age is not None and age < min_age:
                reason = "too_recent"
            if reason is not None:
                action = "kept"
            elif dry_run:
                action = "would_abort"
            else:
                await archive.abort_upload(upload.key, upload.upload_id)
                action = "aborted"
            rows.append(
                {
                    "key": upload.key,
                    "upload_id": upload.upload_id,
                    "initiated": upload.initiated.isoformat() if upload.initiated else None,
                    "age_seconds": None if age is None else round(age),
                    "action": action,
                    "reason": reason,
                }
            )
        orphans = await _orphans(archive, store if reachable else None, min_age, dry_run)
        _report(rows, orphans, reachable, dry_run, as_json)
        return 0
    finally:
        await store.close()
        await archive.close()


async def _orphans(
    archive: ArchiveStore, store: JobStore | None, min_age: float, dry_run: bool
) -> list[dict[str, Any]]:
    """Objects of archives without a manifest (a removal or a commit cut short) go too."""
    orphans = await find_orphans(archive, store, min_age=timedelta(seconds=min_age))
    rows = []
    for orphan in orphans:
        if dry_run:
            action = "would_delete"
        elif await remove_orphan(archive, orphan):
            action = "deleted"
        else:
            action = "kept"  # its manifest is back
        folder = archive.archive_prefix(orphan.provider, orphan.zone, orphan.snapshot_id)
        rows.append({"folder": folder, "keys": list(orphan.keys), "action": action})
    return rows


def _report(
    rows: list[dict[str, Any]],
    orphans: list[dict[str, Any]],
    reachable: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    aborted = sum(row["action"] == "aborted" for row in rows)
    deleted = sum(row["action"] == "deleted" for row in orphans)
    if as_json:
        body = {
            "job_store": reachable,
            "dry_run": dry_run,
            "open": len(rows),
            "aborted": aborted,
            "uploads": rows,
            "orphans": orphans,
            "deleted": deleted,
        }
        print(json.dumps(body, indent=2))
        return
    for row in rows:
        action = KEPT[row["reason"]] if row["reason"] else row["action"].replace("_", " ")
        age = row["age_seconds"]
        age_text = f"{age / 3600:.1f}h" if age is not None else "?"
        print(f"{action:<26} {age_text:>7}  {row['key']}  (upload {row['upload_id'][:16]}…)")
    print(f"{len(rows)} open upload(s), {aborted} aborted")
    for orphan in orphans:
        action = orphan["action"].replace("_", " ")
        if action == "kept":
            action = "kept: its manifest is back"
        count = len(orphan["keys"])
        print(f"{action:<26} {'':>7}  {orphan['folder']}  ({count} object(s), no manifest)")
    print(f"{len(orphans)} archive folder(s) without a manifest, {deleted} deleted")
