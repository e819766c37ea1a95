"""``snaparchive restore SNAPSHOT_ID --zone ZONE --genesis-region REGION --name NAME``: bring
an archived Exoscale snapshot up at Genesis Cloud (:mod:`jobs.genesis_steps`).

Queued for the workers (``--wait`` follows it), or run in this process with ``--local``.
``--json`` prints one object when it ends: ``provider``, ``region``, ``snapshot_id``
(Genesis'), ``name``, ``status``, ``raw_size``, ``raw_md5``, ``source`` (``zone``,
``snapshot_id``, ``manifest``), and ``error`` when it failed.

Exit status: 0 the snapshot is ``created`` (or, without ``--wait``, the job is queued);
1 it failed (one line naming why: no archive, an image that cannot be restored, Genesis'
``error``...); 2 usage or configuration (``GENESISCLOUD_TOKEN`` missing, no ``--name``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from worker.archive import ArchiveStore
from worker.commands.archive import local_store
from worker.commands.follow import follow, run_here
from worker.errors import ConfigError, SnaparchiveError, describe
from worker.jobstore import GENESIS, JobRecord, JobStore, RedisJobStore, Step
from worker.progress import ProgressDisplay
from worker.settings import Settings, load
from worker.units import format_size

if TYPE_CHECKING:
    from jobs.genesis_steps import RestoreRequest

#: A region id as Genesis writes them (``NORD-NO-KRS-1``); checked before anything runs.
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The fields ``--json`` prints, in order.
JSON_FIELDS = ("provider", "region", "snapshot_id", "name", "status", "raw_size", "raw_md5")


def usage_problem(args: argparse.Namespace) -> str | None:
    """Why the Genesis options cannot be run, or ``None``."""
    if not _REGION.match(args.genesis_region or ""):
        return f"--genesis-region {args.genesis_region!r} is not a region id (like NORD-NO-KRS-1)"
    if not args.name or len(args.name) > 255:
        return "--name NAME (1 to 255 characters) is required with --genesis-region"
    return None


def run(args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem:
        print(f"snaparchive: error: {problem}", file=sys.stderr)
        return 2
    settings = load()
    settings.s3.require_bucket()
    from worker.providers.genesiscloud import GenesisCloudSettings

    if not GenesisCloudSettings.from_env(_environ()).token:
        raise ConfigError("GENESISCLOUD_TOKEN is not set")
    from jobs.genesis_steps import RestoreRequest

    request = RestoreRequest(args.genesis_region, args.name)
    return asyncio.run(_restore(settings, args, request))


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


async def _restore(settings: Settings, args: argparse.Namespace, request: RestoreRequest) -> int:
    zone, snapshot_id = args.zone, args.snapshot_id
    async with ArchiveStore(settings.s3) as archive:
        await archive.require_archive("exoscale", zone, snapshot_id)
    if args.local:
        return await _local(settings, args, request)
    return await _queue(settings, args, request)


async def _claim(
    store: JobStore, zone: str, snapshot_id: str, request: RestoreRequest
) -> tuple[JobRecord, bool]:
    """A new restore job holding ``request``, or the running one when it was asked for the
    same (a finished one is replaced: a second restore makes a second snapshot).

    Raises:
      SnaparchiveError: a restore of the snapshot for another region or name runs, or its
        record cannot be read.
    """
    record, created = await store.claim(zone, snapshot_id, replace_done=True, kind=GENESIS)
    if record.step == Step.UNREADABLE:
        raise SnaparchiveError(f"{zone}/{snapshot_id}: {record.error}")
    if created:
        await store.update(zone, snapshot_id, kind=GENESIS, restore=request.to_dict())
        return await store.get(zone, snapshot_id, kind=GENESIS) or record, True
    if record.restore != request.to_dict():
        wanted = record.restore or {}
        raise SnaparchiveError(
            f"{zone}/{snapshot_id}: a restore is running already (as {wanted.get('name')!r} "
            f"in {wanted.get('region')}); wait for it or cancel it (snaparchive cancel "
            f"{snapshot_id})"
        )
    return record, False


async def _local(settings: Settings, args: argparse.Namespace, request: RestoreRequest) -> int:
    from jobs.chains import GENESIS as CHAIN
    from jobs.context import Context
    from jobs.local import LocalRunner

    store = await local_store(settings)
    # A restore calls no Exoscale API: during an Exoscale outage it needs no credentials.
    exoscale = dataclasses.replace(
        settings.exoscale,
        key=settings.exoscale.key or "unused",
        secret=settings.exoscale.secret or "unused",
    )
    ctx = Context.create(dataclasses.replace(settings, exoscale=exoscale), store)
    zone, snapshot_id = args.zone, args.snapshot_id
    try:
        record, created = await _claim(ctx.store, zone, snapshot_id, request)
        if not created and record.active:
            print(
                f"{zone}/{snapshot_id}: joined the running restore; running its steps here too",
                file=sys.stderr,
            )
        record = await run_here(
            LocalRunner(ctx).run(CHAIN.first, zone, snapshot_id),
            follow(ctx.store, zone, snapshot_id, _display(args), 0.25, kind=GENESIS),
        )
    finally:
        await ctx.close()
    return report(record, args.json)


async def _queue(settings: Settings, args: argparse.Namespace, request: RestoreRequest) -> int:
    from jobs import actors

    zone, snapshot_id = args.zone, args.snapshot_id
    store = RedisJobStore.for_settings(settings)
    try:
        record, created = await _claim(store, zone, snapshot_id, request)
        if created or record.sent_at is None:
            try:
                actors.genesis_convert.send(zone, snapshot_id)
            except Exception as error:
                if created:
                    await store.discard(record)
                print(
                    f"snaparchive: error: cannot queue the restore: {describe(error)}",
                    file=sys.stderr,
                )
                return 1
            await store.update(zone, snapshot_id, kind=GENESIS, sent_at=time.time())
            note = "queued"
        else:
            note = f"joined the running restore ({record.step})"
        if not args.wait:
            if args.json:
                job = {"job": f"{zone}/{snapshot_id}", "status": "queued", "note": note}
                print(json.dumps(job))
            else:
                print(f"{zone}/{snapshot_id}: restore to Genesis Cloud {note}", file=sys.stderr)
            return 0
        final = await follow(store, zone, snapshot_id, _display(args), kind=GENESIS)
        return report(final, args.json)
    finally:
        await store.close()


def _display(args: argparse.Namespace) -> ProgressDisplay:
    return ProgressDisplay(sys.stderr, interactive=sys.stderr.isatty() and not args.json)


def outcome_json(record: JobRecord) -> dict[str, Any]:
    """What ``--json`` prints for a finished restore job."""
    result = record.result or {}
    body: dict[str, Any] = {name: result.get(name) for name in JSON_FIELDS}
    body["provider"] = "genesiscloud"
    body["source"] = result.get("source") or {
        "zone": record.zone,
        "snapshot_id": record.snapshot_id,
        "manifest": None,
    }
    if record.step != Step.DONE:
        body["status"] = str(record.step)
        body["error"] = record.error
    return body


def report(record: JobRecord, as_json: bool) -> int:
    """Print a finished restore's outcome; return the exit status (0 only when created)."""
    if as_json:
        print(json.dumps(outcome_json(record), indent=2))
    elif record.step == Step.DONE and record.result:
        result = record.result
        print(
            f"restored {record.zone}/{record.snapshot_id} to Genesis Cloud: snapshot "
            f"{result['snapshot_id']} ({result['name']}) in {result['region']} is "
            f"{result['status']}; raw disk {format_size(result['raw_size'])}, "
            f"md5 {result['raw_md5']}"
        )
    if record.step == Step.DONE:
        return 0
    print(f"snaparchive: error: {record.error or record.step}", file=sys.stderr)
    return 1
