"""``snaparchive verify``: re-read archives and check them (a scrub).

``verify SNAPSHOT_ID --zone ZONE`` checks one archive; ``verify --all`` every archive in the
bucket, or a deterministic ``--subset N/T`` of them (T runs cover all), or a random
``--sample PCT`` share. Each result is recorded beside its manifest (:mod:`worker.scrub`).

Exit status: 0 every archive checked is good; 3 at least one failed its verification (its
MD5, an object missing or of another size); 1 the store could not be read; 2 usage errors.
A failed verification never deletes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.catalog import ArchiveEntry, list_archives
from worker.commands.restore import find_manifest
from worker.errors import EXIT_FAILED, EXIT_OK, EXIT_VERIFICATION, SnaparchiveError, describe
from worker.reader import CONCURRENCY
from worker.scrub import Verification, select, verify
from worker.settings import S3Settings, load

_SUBSET = re.compile(r"([0-9]+)/([0-9]+)")


def subset(text: str) -> tuple[int, int]:
    """``N/T`` with 1 <= N <= T: group N of T."""
    match = _SUBSET.fullmatch(text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise argparse.ArgumentTypeError(f"a subset is N/T with 1 <= N <= T, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def sample(text: str) -> float:
    """A share of the archives in percent, ``5%`` or ``5``: more than 0, at most 100."""
    try:
        share = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a sample is a percentage like 5%, got {text!r}"
        ) from None
    if not 0 < share <= 100:
        raise argparse.ArgumentTypeError(f"a sample is more than 0% and at most 100%: {text!r}")
    return share


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", nargs="?", type=types.snapshot_id, help="one archive")
    parser.add_argument("--zone", type=types.zone, help="its zone (with --all: only this zone)")
    parser.add_argument("--all", action="store_true", help="every archive in the bucket")
    share = parser.add_mutually_exclusive_group()
    share.add_argument("--subset", type=subset, metavar="N/T", help="with --all: group N of T")
    share.add_argument("--sample", type=sample, metavar="PCT", help="with --all: a random share")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.all == bool(args.snapshot_id):
        print("snaparchive: error: give a SNAPSHOT_ID (with --zone) or --all", file=sys.stderr)
        return 2
    if args.snapshot_id and not args.zone:
        print("snaparchive: error: SNAPSHOT_ID needs --zone", file=sys.stderr)
        return 2
    if (args.subset or args.sample) and not args.all:
        print("snaparchive: error: --subset and --sample go with --all", file=sys.stderr)
        return 2
    settings = load()
    settings.s3.require_bucket()
    results, unread = asyncio.run(_verify(settings.s3, args))
    if args.json:
        rows = [r.to_json() for r in results]
        print(json.dumps(rows if args.all else rows[0], indent=2))
    else:
        for r in results:
            verdict = "ok" if r.ok else f"FAILED: {r.error}"
            print(f"{r.zone}/{r.snapshot_id}: {verdict}")
        if args.all:
            failed = sum(not r.ok for r in results)
            print(
                f"{len(results)} archive(s) verified, {failed} failed, {unread} unreadable",
                file=sys.stderr,
            )
    if not all(r.ok for r in results):
        return EXIT_VERIFICATION
    return EXIT_FAILED if unread else EXIT_OK


async def _verify(s3: S3Settings, args: argparse.Namespace) -> tuple[list[Verification], int]:
    """The verifications made, and how many archives could not be read."""
    async with ArchiveStore(s3, max_workers=CONCURRENCY + 1) as store:
        if args.all:
            entries = select(await list_archives(store, zone=args.zone), args.subset, args.sample)
        else:
            manifest = await find_manifest(store, args.zone, args.snapshot_id)
            key = store.manifest_key(manifest.provider, manifest.zone, manifest.snapshot_id)
            entries = [ArchiveEntry(key, manifest)]
        results, unread = [], 0
        for entry in entries:
            try:
                results.append(await verify(store, entry))
            except SnaparchiveError as error:
                # The store failed: no verdict on this archive; the others go on.
                print(
                    f"snaparchive: error: {entry.zone}/{entry.snapshot_id}: {describe(error)}",
                    file=sys.stderr,
                )
                if not args.all:
                    raise
                unread += 1
        return results, unread
