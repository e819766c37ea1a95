"""``snaparchive worker``: Dramatiq worker processes for snaparchive's queue."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from worker import argtypes as types
from worker.settings import load

#: Dramatiq options snaparchive sets itself: passed after ``--`` they would undo its own.
OWN_OPTIONS = (
    "--processes",
    "-p",
    "--threads",
    "-t",
    "--queues",
    "-Q",
    "--worker-shutdown-timeout",
)


class _Passthrough(argparse.Action):
    """Keeps what follows ``--`` for Dramatiq, refusing the options snaparchive sets."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        extra = [str(value) for value in values or []]
        if extra[:1] == ["--"]:
            extra = extra[1:]
        for arg in extra:
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]  # -p4 is -p 4
            if name in OWN_OPTIONS:
                parser.error(
                    f"{name}: snaparchive worker sets it (its own options, SNAPARCHIVE_QUEUE)"
                )
        setattr(namespace, self.dest, extra)


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
    parser.add_argument(
        "dramatiq_args",
        nargs=argparse.REMAINDER,
        action=_Passthrough,
        metavar="-- DRAMATIQ_OPTION",
        help="after --: Dramatiq's own options, passed on (e.g. -- --pid-file /run/worker.pid)",
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
        *args.dramatiq_args,
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaces this process
