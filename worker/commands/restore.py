"""``snaparchive restore``: read an archive back and verify it, to a file or stdout.

``--verify`` reads and checks without writing: a scheduled re-read of stored archives.
With ``--output -`` the bytes go to stdout as they are read, so a mismatch can only be
reported at the end (exit status 1); ``--output PATH`` renames the file into place only
after the whole image verified.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from worker.archive import ArchiveStore, Manifest, s3_client
from worker.commands import args as types
from worker.errors import NotFound
from worker.progress import ProgressDisplay
from worker.restore import restore_to_file, stream_archive
from worker.settings import Settings, load
from worker.units import format_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument("--zone", required=True, type=types.zone, help="the snapshot's zone")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", "-o", metavar="PATH", help="write the image here (- stdout)")
    target.add_argument("--verify", action="store_true", help="only read and verify")


def _manifest(settings: Settings, zone: str, snapshot_id: str) -> Manifest | None:
    async def find() -> Manifest | None:
        store = ArchiveStore(settings.s3)
        try:
            return await store.find_archive("exoscale", zone, snapshot_id)
        finally:
            await store.close()

    return asyncio.run(find())


def run(args: argparse.Namespace) -> int:
    settings = load()
    settings.s3.require_bucket()
    manifest = _manifest(settings, args.zone, args.snapshot_id)
    if manifest is None:
        raise NotFound(
            f"no verified archive of {args.zone}/{args.snapshot_id} "
            f"in s3://{settings.s3.bucket}/{settings.s3.prefix}"
        )
    client = s3_client(settings.s3)
    display = ProgressDisplay(sys.stderr)
    try:
        if args.verify:
            md5 = stream_archive(client, settings.s3.bucket, manifest, None, display.update)
        elif args.output == "-":
            md5 = stream_archive(
                client, settings.s3.bucket, manifest, sys.stdout.buffer, display.update
            )
        else:
            md5 = restore_to_file(
                client, settings.s3.bucket, manifest, Path(args.output), display.update
            )
    finally:
        display.close()
    where = "verified in place" if args.verify else f"restored to {args.output}"
    print(
        f"{args.zone}/{args.snapshot_id}: {format_size(manifest.size)}, md5 {md5} {where}",
        file=sys.stderr,
    )
    return 0
