"""``snaparchive restore``: read an archive back and verify it, to a file or stdout.

``--verify`` reads and checks without writing: a scheduled re-read of stored archives.
With ``--output -`` the bytes go to stdout as they are read, so a mismatch can only be
reported at the end (exit status 3); ``--output PATH`` renames the file into place only
after the whole image verified.

Exit status: 0 restored (or verified); 3 the archive fails verification (its MD5, an object
missing or of another size than the manifest says, a malformed manifest); 1 there is no
archive, the store cannot be read, or the image cannot be written (one line naming the object
or the file); 2 usage errors, among them an ``--output`` that cannot be a file (a directory, a
device, a path whose directory does not exist), found before anything is read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from pathlib import Path

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.errors import NotFound
from worker.manifest import Manifest
from worker.progress import ProgressDisplay
from worker.restore import OutputError, restore_to_file, stream_archive
from worker.s3client import s3_client
from worker.settings import Settings, load
from worker.units import format_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument("--zone", required=True, type=types.zone, help="the snapshot's zone")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", "-o", metavar="PATH", help="write the image here (- stdout)")
    target.add_argument("--verify", action="store_true", help="only read and verify")
    # Cross-cloud: restore at Genesis Cloud (worker.commands.restore_genesis).
    target.add_argument("--genesis-region", metavar="REGION", help="make a Genesis Cloud snapshot")
    genesis = parser.add_argument_group("with --genesis-region")
    genesis.add_argument("--name", help="the Genesis Cloud snapshot's name")
    genesis.add_argument("--wait", action="store_true", help="follow the restore to its end")
    genesis.add_argument("--local", action="store_true", help="run it here, no broker")
    genesis.add_argument("--json", action="store_true", help="print one JSON object")


def output_problem(text: str) -> str | None:
    """Return why ``text`` cannot be the path of the restored image, or ``None``.

    The image is written beside it and renamed over it, so it must name a file (new, or a
    regular file to replace) in an existing directory we may write in.
    """
    path = Path(text)
    if text.endswith("/") or path.name in ("", ".", "..") or path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(mode):
        return "is not a regular file (write to a device or pipe with --output -)"
    return None


def _manifest(settings: Settings, zone: str, snapshot_id: str) -> Manifest | None:
    async def find() -> Manifest | None:
        store = ArchiveStore(settings.s3)
        try:
            return await store.find_archive("exoscale", zone, snapshot_id)
        finally:
            await store.close()

    return asyncio.run(find())


def run(args: argparse.Namespace) -> int:
    if args.genesis_region is not None:
        from worker.commands import restore_genesis

        return restore_genesis.run(args)
    if args.output not in (None, "-"):
        problem = output_problem(args.output)
        if problem:
            print(f"snaparchive: error: --output {args.output}: {problem}", file=sys.stderr)
            return 2
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
            md5 = _to_stdout(client, settings.s3.bucket, manifest, display)
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


def _to_stdout(client: object, bucket: str, manifest: Manifest, display: ProgressDisplay) -> str:
    try:
        md5 = stream_archive(client, bucket, manifest, sys.stdout.buffer, display.update, "stdout")
        sys.stdout.buffer.flush()
    except OSError as exc:
        _drop_stdout()
        raise OutputError(f"cannot write stdout: {exc.strerror or exc}") from None
    except OutputError:
        _drop_stdout()
        raise
    return md5


def _drop_stdout() -> None:
    """Point stdout at /dev/null: a reader that went away (``| head``) would make the
    interpreter's last flush print a traceback of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
