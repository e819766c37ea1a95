"""``snaparchive restore SNAPSHOT_ID --zone ZONE --template NAME``: register an archive as a
bootable Exoscale template, in the archive's zone or ``--target-zone``.

The archive is checked here first (its manifest reads back valid, every object is there with
its size, a segmented image fits in one object of the store): a missing object is one line and
exit status 1 before anything is queued. Then the restore job (:mod:`jobs.restore_steps`) is
queued for the workers, or run in this process with ``--local``, and with ``--wait`` (or
``--local``) followed to its end. Its options are defined with the command's
(:mod:`worker.commands.restore`), so that a restore to a file does not import this module.

The template gets the source instance's boot mode, login flags and default user as the
manifest recorded them (Exoscale's defaults for older archives), unless overridden.

Exit status: 0 only when the template exists and its checksum equals the archive's MD5 (or,
without ``--wait``, when the job is queued); 1 the restore failed (one line naming the
cause); 2 usage errors; 3 Exoscale refused the checksum, or the template's is not the
archive's MD5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from worker.archive import ArchiveStore
from worker.commands.archive import local_store
from worker.commands.follow import UNREACHABLE_PATIENCE, follow, outcome_json, run_here
from worker.commands.restore import find_manifest
from worker.errors import CHECKSUM_REFUSED
from worker.jobstore import RESTORE, JobRecord, JobStore, RedisJobStore, Step
from worker.join import plan_join
from worker.manifest import Manifest
from worker.progress import ProgressDisplay
from worker.reader import check_objects
from worker.settings import Settings, load
from worker.source_template import Overrides
from worker.units import format_size

#: How a failure that is a refused verification begins (exit status 3).
_VERIFICATION_FAILED = (CHECKSUM_REFUSED, "md5 mismatch")


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not 1 <= len(args.template) <= 255:
        return "--template: a name of 1 to 255 characters"
    if args.default_user is not None and not 1 <= len(args.default_user) <= 255:
        return "--default-user: a name of 1 to 255 characters"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"snaparchive: error: {problem}", file=sys.stderr)
        return 2
    settings = load()
    settings.exoscale.require_credentials()
    settings.s3.require_bucket()
    return asyncio.run(_restore(settings, args))


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    """What the job record keeps of the command: target zone, name, overrides."""
    overrides = Overrides(
        boot_mode=args.boot_mode,
        default_user=args.default_user,
        password_enabled=False if args.disable_password else None,
        ssh_key_enabled=False if args.disable_ssh_key else None,
    )
    return {"target_zone": args.target_zone or args.zone, "name": args.template,
            **overrides.to_dict()}  # fmt: skip


async def check_archive(settings: Settings, zone: str, snapshot_id: str) -> Manifest:
    """The archive's manifest, once its objects are all there with their sizes and a
    segmented image fits in one object of the store (what the restore will check again)."""
    async with ArchiveStore(settings.s3) as store:
        manifest = await find_manifest(store, zone, snapshot_id)
        await check_objects(store, manifest.objects)
    if len(manifest.objects) > 1:
        plan_join(manifest.objects, settings.s3.object_limit)
    return manifest


async def _restore(settings: Settings, args: argparse.Namespace) -> int:
    zone, snapshot_id = args.zone, args.snapshot_id
    manifest = await check_archive(settings, zone, snapshot_id)
    request = request_of(args)
    store: JobStore = (
        await local_store(settings) if args.local else RedisJobStore.for_settings(settings)
    )
    try:
        record, created = await store.claim(zone, snapshot_id, kind=RESTORE, replace_done=True)
        if record.step == Step.UNREADABLE:
            print(f"snaparchive: error: {zone}/{snapshot_id}: {record.error}", file=sys.stderr)
            return 1
        if created:
            await store.update(zone, snapshot_id, kind=RESTORE, restore=request)
        elif record.restore != request:
            wanted = record.restore or {}
            print(
                f"snaparchive: error: {zone}/{snapshot_id}: a restore is running already (as "
                f"template {wanted.get('name')!r} in {wanted.get('target_zone')}); wait for it "
                f"or cancel it (snaparchive cancel {snapshot_id})",
                file=sys.stderr,
            )
            return 1
        note = "queued" if created else f"joined the running restore ({record.step})"
        final: JobRecord | None
        if args.local:
            final = await _run_here(settings, store, zone, snapshot_id, args.json, note)
        else:
            final = await _queue(settings, store, record, created, args, note)
            if final is None:
                return 0
        return report(final, manifest, args.json)
    finally:
        await store.close()


async def _run_here(
    settings: Settings, store: JobStore, zone: str, snapshot_id: str, as_json: bool, note: str
) -> JobRecord:
    from jobs import restore_steps
    from jobs.context import Context
    from jobs.local import LocalRunner

    print(f"{zone}/{snapshot_id}: restore {note}; running it here", file=sys.stderr)
    ctx = Context.create(settings, store)
    try:
        record = await run_here(
            LocalRunner(ctx).run(restore_steps.FIRST, zone, snapshot_id),
            follow(store, zone, snapshot_id, _display(as_json), 0.25, _patience(settings), RESTORE),
        )
    finally:
        # The job's store is the caller's to close.
        await ctx.exoscale.close()
        await ctx.archive.close()
    return record


async def _queue(
    settings: Settings,
    store: JobStore,
    record: JobRecord,
    created: bool,
    args: argparse.Namespace,
    note: str,
) -> JobRecord | None:
    """Send the job's first message (unless it runs already); follow it with ``--wait``."""
    from jobs import actors, restore_steps

    zone, snapshot_id = args.zone, args.snapshot_id
    if created or record.sent_at is None:
        try:
            actors.ACTORS[restore_steps.FIRST].send(zone, snapshot_id)
        except Exception as error:
            if created:
                await store.discard(record)
            reason = str(error) or type(error).__name__
            print(f"snaparchive: error: cannot queue the restore: {reason}", file=sys.stderr)
            raise SystemExit(1) from None
        await store.update(zone, snapshot_id, kind=RESTORE, sent_at=time.time())
    if not args.wait:
        if args.json:
            print(json.dumps({"job": f"{zone}/{snapshot_id}", "kind": RESTORE, "status":
                              record.step, "note": note}))  # fmt: skip
        else:
            print(f"{zone}/{snapshot_id}")
            print(f"restore {note}; follow it with: snaparchive status {snapshot_id}",
                  file=sys.stderr)  # fmt: skip
        return None
    print(f"{zone}/{snapshot_id}: restore {note}", file=sys.stderr)
    return await follow(
        store, zone, snapshot_id, _display(args.json), patience=_patience(settings), kind=RESTORE
    )


def _display(as_json: bool) -> ProgressDisplay:
    return ProgressDisplay(sys.stderr, interactive=sys.stderr.isatty() and not as_json)


def _patience(settings: Settings) -> float:
    return max(UNREACHABLE_PATIENCE, settings.lease_ttl * 5)


def report(record: JobRecord, manifest: Manifest, as_json: bool) -> int:
    """Print the restore's outcome; return the exit status: 0 only when the template exists
    with the archive's MD5 as its checksum, 3 when a checksum was refused."""
    result = record.result or {}
    restored = record.step == Step.DONE and result.get("checksum") == manifest.md5
    if as_json:
        print(json.dumps(result if restored else outcome_json(record), indent=2))
    elif restored:
        print(
            f"restored {record.zone}/{record.snapshot_id} as template {result['name']!r} "
            f"({result['template_id']}) in {result['zone']}: {format_size(result['size'])}, "
            f"checksum {result['checksum']} verified"
        )
    if restored:
        return 0
    error = record.error or f"the restore ended {record.step}"
    if record.step == Step.DONE:
        error = f"md5 mismatch: the template's checksum is {result.get('checksum')}, the "
        error += f"archive's {manifest.md5}"
    print(f"snaparchive: error: {error}", file=sys.stderr)
    return 3 if error.startswith(_VERIFICATION_FAILED) else 1
