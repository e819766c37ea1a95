"""``snaparchive worker``: Dramatiq worker processes for snaparchive's queue.

Dramatiq's command line runs in this process (its main process forks the workers and, with
``--metrics-port``, the exporter of :mod:`worker.metrics`). Its exit statuses are mapped onto
snaparchive's: 0 stopped (SIGTERM), 130 interrupted (SIGINT), 2 usage or configuration, 1 any
other failure (a broker that does not answer at start, a worker process that died); never 3,
which means bad data.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from worker import argtypes as types
from worker import logs, metrics
from worker.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
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


#: Dramatiq's exit statuses (dramatiq.cli's RET_*) → ours.
_EXIT_STATUSES = {
    0: EXIT_OK,
    1: EXIT_FAILED,  # a worker process was killed or died
    2: EXIT_USAGE,  # a module did not import, or a bad argument
    3: EXIT_FAILED,  # the broker did not answer at start: transient
    4: EXIT_USAGE,  # the PID file
}


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
        "--metrics-port",
        type=types.whole_number(1, 65535),
        help="serve Prometheus metrics on this port, one exporter for all the processes "
        "(default: SNAPARCHIVE_METRICS_PORT; none)",
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
    # A worker logs what it does (INFO) unless asked for more; its processes inherit this.
    level = logging.DEBUG if args.verbose else logging.INFO
    logs.setup(level, text_format=logs.WORKER_TEXT_FORMAT)
    # Hours-long jobs: prefetch no more than the threads can run, or a busy worker would
    # sit on messages an idle one could take (dramatiq #183).
    os.environ["dramatiq_queue_prefetch"] = str(args.threads)  # noqa: SIM112 (its real name)
    argv = [
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
    if args.verbose:
        argv.append("--verbose")
    port = args.metrics_port or settings.metrics_port
    if port is None:
        return run_dramatiq(argv)
    metrics.check_port(port)
    # Before any process imports prometheus_client: the worker processes write samples there.
    directory, owned = metrics.multiprocess_directory()
    os.environ["SNAPARCHIVE_METRICS_PORT"] = str(port)
    try:
        return run_dramatiq([*argv, "--fork-function", "worker.metrics:run_exporter"])
    finally:
        if owned:
            metrics.remove_directory(directory)


def run_dramatiq(argv: list[str]) -> int:
    """Run Dramatiq's command line with ``argv`` here; return snaparchive's exit status."""
    from dramatiq.cli import main, make_argument_parser

    args = make_argument_parser().parse_args(argv)
    sys.stdout.flush()
    with _signals_seen() as seen:
        code = main(args)
    if code == 0 and signal.SIGINT in seen:
        return EXIT_INTERRUPTED
    return _EXIT_STATUSES.get(code, EXIT_FAILED)


@contextlib.contextmanager
def _signals_seen() -> Iterator[set[int]]:
    """Yields the set of the signals this process gets within, filled at its end.

    Dramatiq's own handlers run meanwhile (they tell the workers to stop, alike for SIGINT and
    SIGTERM); the signal module also writes each signal's number to a wakeup pipe, whatever
    handler is installed, and that pipe is read at the end.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    seen: set[int] = set()
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 512):
                seen.update(chunk)
        os.close(read_end)
        os.close(write_end)
