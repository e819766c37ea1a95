"""``snaparchive scheduler``: run every policy on its schedule until stopped.

Run one per host for availability: one leads, the others stand by (see
:mod:`worker.scheduler`). SIGTERM or SIGINT stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import uuid
from datetime import datetime

from jobs.context import Launch
from worker import argtypes as types
from worker import backups, metrics
from worker.archive import ArchiveStore
from worker.catalog import list_archives
from worker.commands.policy_args import add_policies_argument, load_policies
from worker.errors import describe
from worker.exoscale import ExoscaleClient
from worker.forget import owned_by
from worker.jobstore import RedisJobStore
from worker.policy import Policy
from worker.schedule import grace_from_env
from worker.scheduler import Scheduler
from worker.scrub import select
from worker.settings import load

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policies_argument(parser)
    parser.add_argument(
        "--metrics-port",
        type=types.whole_number(1, 65535),
        help="serve Prometheus metrics on this port (default: SNAPARCHIVE_METRICS_PORT; none)",
    )


def run(args: argparse.Namespace) -> int:
    policies = load_policies(args)
    settings = load()
    settings.exoscale.require_credentials()
    settings.s3.require_bucket()
    grace = grace_from_env()
    from jobs import actors

    port = args.metrics_port or settings.metrics_port
    stop_metrics = metrics.serve(port) if port is not None else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        store = RedisJobStore.for_settings(settings)
        client = ExoscaleClient(settings.exoscale)

        async def send(step: str, a: str, b: str) -> None:
            await asyncio.to_thread(actors.ACTORS[step].send, a, b)

        async def fire(policy: Policy, slot: datetime, key: str, kind: str) -> None:
            if kind == "verify":
                await _scrub(policy, key, send)
                return
            try:
                instances = await backups.begin_run(store, client, policy, key, "schedule", send)
            except Exception as error:  # the slot is spent: say why it did nothing
                log.error(
                    "%s: the run of %s could not start: %s", policy.name, key, describe(error)
                )
                await store.save_doc(backups.RUN, key, {"error": describe(error)})
                return
            log.info("%s: run %s started for %d instance(s)", policy.name, key, len(instances))

        async def _scrub(policy: Policy, key: str, send: Launch) -> None:
            try:
                async with ArchiveStore(settings.s3) as archive:
                    instances = await backups.resolve_instances(client, policy)
                    entries = owned_by(
                        policy, await list_archives(archive, zone=policy.zone), instances
                    )
            except Exception as error:  # the slot is spent: say why it did nothing
                log.error("%s: the scrub %s could not start: %s", policy.name, key, describe(error))
                return
            chosen = select(entries, policy.verify_subset)
            for entry in chosen:
                await send("verify_archive", entry.zone, entry.snapshot_id)
            log.info(
                "%s: scrub %s: %d of %d archive(s)", policy.name, key, len(chosen), len(entries)
            )

        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        scheduler = Scheduler(store, policies, fire, owner, grace=grace)
        names = ", ".join(policies.names)
        print(f"snaparchive scheduler: {names} (grace {grace}); SIGTERM stops it", flush=True)
        try:
            await scheduler.run(stop)
        finally:
            await client.close()
            await store.close()

    try:
        asyncio.run(main())
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0
