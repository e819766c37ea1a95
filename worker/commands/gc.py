"""``snaparchive gc``: find multipart uploads nobody will complete, and abort them.

Incomplete uploads are invisible but their parts are billed. An upload is abandoned when
no active job of the job store owns its snapshot, nobody holds the transfer lease of its
archive (whatever the upload's age: a transfer is running), no restore job converting the
archive is active or leased (the restore job store, :mod:`jobs.genesis_steps`), and it is older than
``--older-than`` hours: a guard for transfers the job store does not know, like
``archive --local`` runs that could not reach Redis. ``0`` drops the guard, for when no
such run can be going on.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.jobstore import RedisJobStore
from worker.settings import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        type=types.non_negative_int,
        default=1,
        metavar="HOURS",
        help="only uploads started at least this many hours ago (default 1; 0: any)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, abort nothing")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_gc(args.older_than * 3600, args.dry_run))


async def _gc(min_age: float, dry_run: bool) -> int:
    settings = load()
    settings.s3.require_bucket()
    archive = ArchiveStore(settings.s3)
    store = RedisJobStore.for_settings(settings)
    # Restores convert archives beside them (image.raw.zst): their jobs and leases count too.
    restores = RedisJobStore(settings.redis_url, namespace=f"{settings.queue}:genesis")
    try:
        active = {(r.zone, r.snapshot_id) for r in await store.list(limit=100_000) if r.active}
        active |= {(r.zone, r.snapshot_id) for r in await restores.list(100_000) if r.active}
        uploads = await archive.list_open_uploads()
        now = datetime.now(UTC)
        aborted = 0
        for upload in uploads:
            # Keys are {prefix}{provider}/{zone}/{snapshot_id}/image...
            parts = upload.key[len(archive.prefix) :].split("/")
            owner = (parts[1], parts[2]) if len(parts) >= 4 else None
            age = (now - upload.initiated).total_seconds() if upload.initiated else None
            if owner in active:
                action = "kept: its job is running"
            elif owner is not None and await store.lease_left(*owner) > 0:
                action = "kept: leased by a transfer"
            elif owner is not None and await restores.lease_left(*owner) > 0:
                action = "kept: leased by a restore"
            elif min_age and age is not None and age < min_age:
                action = "kept: too recent"
            elif dry_run:
                action = "would abort"
            else:
                await archive.abort_upload(upload.key, upload.upload_id)
                action = "aborted"
                aborted += 1
            age_text = f"{age / 3600:.1f}h" if age is not None else "?"
            print(f"{action:<26} {age_text:>7}  {upload.key}  (upload {upload.upload_id[:16]}…)")
        print(f"{len(uploads)} open upload(s), {aborted} aborted")
        return 0
    finally:
        await store.close()
        await restores.close()
        await archive.close()
