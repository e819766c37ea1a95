"""``snaparchive backup POLICY``: run a backup policy now.

For each of the policy's instances: snapshot it, archive the snapshot verified, rotate the
policy's snapshots, apply retention. Queued for the workers (``--wait`` follows the run), or
run here with ``--local``. Exit 0 only when every instance got a verified archive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from worker import backups
from worker.backups import InstanceRun
from worker.commands.archive import local_store
from worker.commands.policy_args import add_policies_argument, load_policies
from worker.exoscale import ExoscaleClient
from worker.jobstore import JobStore, RedisJobStore
from worker.policy import Policy
from worker.settings import Settings, load

#: Seconds between looks at a run followed with ``--wait``.
FOLLOW_INTERVAL = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="POLICY", help="the policy's name")
    add_policies_argument(parser)
    parser.add_argument("--wait", action="store_true", help="follow the run to its end")
    parser.add_argument(
        "--local", action="store_true", help="run every step in this process, no broker"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    policy = load_policies(args).get(args.policy)
    settings = load()
    settings.exoscale.require_credentials()
    settings.s3.require_bucket()
    return asyncio.run(_backup(settings, policy, args))


async def _backup(settings: Settings, policy: Policy, args: argparse.Namespace) -> int:
    run_id = backups.manual_run_id(policy.name)
    if args.local:
        return await _here(settings, policy, run_id, args.json)
    from jobs import actors

    async def send(step: str, a: str, b: str) -> None:
        await asyncio.to_thread(actors.ACTORS[step].send, a, b)

    store = RedisJobStore.for_settings(settings)
    try:
        async with ExoscaleClient(settings.exoscale) as client:
            instances = await backups.begin_run(store, client, policy, run_id, "manual", send)
        if not instances:
            return _nothing(policy)
        if not args.wait:
            if args.json:
                print(json.dumps({"policy": policy.name, "run": run_id, "status": "queued"}))
            else:
                print(run_id)
                print(
                    f"queued {len(instances)} instance(s); follow: snaparchive status",
                    file=sys.stderr,
                )
            return 0
        return _report(policy, run_id, await _follow(store, run_id), args.json)
    finally:
        await store.close()


async def _here(settings: Settings, policy: Policy, run_id: str, as_json: bool) -> int:
    from jobs.context import Context
    from jobs.local import LocalRunner

    ctx = Context.create(settings, await local_store(settings))
    try:
        runner = LocalRunner(ctx)
        instances = await backups.begin_run(
            ctx.store, ctx.exoscale, policy, run_id, "manual", runner.launch
        )
        if not instances:
            return _nothing(policy)
        await runner.wait()
        states = await backups.run_instances(ctx.store, run_id)
    finally:
        await ctx.close()
    return _report(policy, run_id, states, as_json)


async def _follow(store: JobStore, run_id: str) -> list[InstanceRun]:
    while True:
        states = await backups.run_instances(store, run_id)
        if all(s.status in backups.FINAL for s in states):
            return states
        await asyncio.sleep(FOLLOW_INTERVAL)


def _nothing(policy: Policy) -> int:
    print(f"snaparchive: error: policy {policy.name!r} covers no instance now", file=sys.stderr)
    return 1


def _report(policy: Policy, run_id: str, states: list[InstanceRun], as_json: bool) -> int:
    ok = bool(states) and all(s.status == backups.DONE for s in states)
    if as_json:
        body = {"policy": policy.name, "run": run_id, "instances": [s.report() for s in states]}
        print(json.dumps(body, indent=2))
    else:
        for s in states:
            detail = s.manifest if s.status == backups.DONE else s.error
            print(f"{s.instance_id}  {s.status:<7} {s.snapshot_id or '-'}  {detail or ''}")
    return 0 if ok else 1
