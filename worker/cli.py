"""The ``snaparchive`` command line.

Exit status (:mod:`worker.errors`): 0 success; 1 the work failed (one line on stderr naming the
cause); 2 usage or configuration errors (an unknown zone, a malformed id, a missing variable);
3 verification failed (bad data: an MD5 mismatch, a store corrupting parts); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import redis.exceptions
from dramatiq.errors import BrokerError

from worker import __version__, logs
from worker.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    SnaparchiveError,
    exit_status,
)

#: What the one line on stderr calls a failure, by exit status.
_LABELS = {EXIT_USAGE: "configuration error", EXIT_VERIFICATION: "verification failed"}
#: Log levels by ``-v`` count.
_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)

#: Subcommand → (module with add_arguments/run, help).
COMMANDS = {
    "archive": ("worker.commands.archive", "archive one snapshot (queue it, or --local)"),
    "status": ("worker.commands.status", "show archive and restore jobs"),
    "restore": (
        "worker.commands.restore",
        "restore an archive, verified: as an Exoscale template, to a file or stdout",
    ),
    "cancel": ("worker.commands.cancel", "stop a job and abort its uploads"),
    "gc": ("worker.commands.gc", "list and abort abandoned multipart uploads"),
    "worker": ("worker.commands.worker", "run Dramatiq workers for the pipeline"),
    "simulate": ("worker.simulator.cli", "run the Exoscale API simulator"),
    "demo": ("worker.commands.demo", "archive a simulated snapshot into a local S3, end to end"),
    "backup": ("worker.commands.backup", "run a backup policy now"),
    "forget": ("worker.commands.forget", "apply the policies' retention to their archives"),
    "archives": ("worker.commands.archives", "the archives in the bucket"),
    "policies": ("worker.commands.policies", "the backup policy file"),
    "scheduler": ("worker.commands.scheduler", "run every policy on its schedule"),
    "verify": ("worker.commands.verify", "re-read archives and check them (a scrub)"),
}


#: The ``snapshots`` group's subcommands, likewise.
SNAPSHOT_COMMANDS = {
    "list": (
        "worker.providers.cli",
        "list snapshots of every configured cloud, with archive coverage",
    ),
}


def _invoked(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``, if any (the first word that is one)."""
    return next((word for word in argv if word in COMMANDS or word == "snapshots"), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Return the parser; only the module of the subcommand named in ``argv`` is imported
    (``--help`` and one command's start-up then skip the others, the simulator's aiohttp.web
    among them). ``argv=None`` imports them all."""
    invoked = None if argv is None else _invoked(argv)
    parser = argparse.ArgumentParser(
        prog="snaparchive",
        description="Export Exoscale snapshots, verify them while streaming, archive them to S3.",
    )
    parser.add_argument("--version", action="version", version=f"snaparchive {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if argv is None or name == invoked:
            _attach(sub, module_name)
    snapshots = commands.add_parser("snapshots", help="snapshots across clouds")
    snapshot_commands = snapshots.add_subparsers(dest="snapshots_command", required=True)
    for name, (module_name, help_text) in SNAPSHOT_COMMANDS.items():
        sub = snapshot_commands.add_parser(name, help=help_text, description=help_text)
        if argv is None or invoked == "snapshots":
            _attach(sub, module_name)
    return parser


def _attach(parser: argparse.ArgumentParser, module_name: str) -> None:
    # -v after the subcommand too (snaparchive status -v); SUPPRESS keeps one given before it.
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (-vv: debug)"
    )
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        logs.setup(_LEVELS[min(args.verbose, len(_LEVELS) - 1)])
        return args.run(args)
    except SnaparchiveError as error:
        status = exit_status(error)
        print(f"snaparchive: {_LABELS.get(status, 'error')}: {error}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("snaparchive: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, redis.exceptions.ConnectionError, BrokerError) as error:
        print(f"snaparchive: error: cannot connect: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
