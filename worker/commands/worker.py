"""``snaparchive worker``: Dramatiq worker processes for snaparchive's queue."""

from __future__ import annotations

import argparse
import os
import sys

from worker import argtypes as types
from worker.settings import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes",
        type=types.positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per CPU)",
    )
    parser.add_argument(
        "--threads",
        type=types.positive_int,
        default=4,
        help="jobs at once per process (default 4)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=types.positive_int,
        default=60,
        help="seconds a stopping worker waits for jobs to checkpoint (default 60)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load()
    settings.exoscale.require_credentials()
    settings.s3.require_bucket()
    # Hours-long jobs: prefetch no more than the threads can run, or a busy worker would
    # sit on messages an idle one could take (dramatiq #183).
    os.environ["dramatiq_queue_prefetch"] = str(args.threads)  # noqa: SIM112 (its real name)
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "jobs.actors",
        "--queues",
        settings.queue,
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--worker-shutdown-timeout",
        str(args.shutdown_timeout * 1000),
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaces this process
