"""The ``snaparchive`` command line.

Exit status: 0 success; 1 the work failed (one line on stderr naming the cause);
2 usage or configuration errors (an unknown zone, a malformed id, a missing variable).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import redis.exceptions
from dramatiq.errors import BrokerError

from worker import __version__
from worker.errors import ConfigError, SnaparchiveError

#: Subcommand → (module with add_arguments/run, help).
COMMANDS = {
    "archive": ("worker.commands.archive", "archive one snapshot (queue it, or --local)"),
    "status": ("worker.commands.status", "show archive jobs"),
    "restore": ("worker.commands.restore", "read an archive back, verified, to a file or stdout"),
    "cancel": ("worker.commands.cancel", "stop a job and abort its uploads"),
    "gc": ("worker.commands.gc", "list and abort abandoned multipart uploads"),
    "worker": ("worker.commands.worker", "run Dramatiq workers for the pipeline"),
    "simulate": ("worker.simulator.cli", "run the Exoscale API simulator"),
    "demo": ("worker.commands.demo", "archive a simulated snapshot into a local S3, end to end"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snaparchive",
        description="Export Exoscale snapshots, verify them while streaming, archive them to S3.",
    )
    parser.add_argument("--version", action="version", version=f"snaparchive {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    snapshots = commands.add_parser("snapshots", help="snapshots across clouds")
    snapshot_commands = snapshots.add_subparsers(dest="snapshots_command", required=True)
    listing = snapshot_commands.add_parser(
        "list", help="list snapshots of every configured cloud, with archive coverage"
    )
    inventory = importlib.import_module("worker.providers.cli")
    inventory.add_arguments(listing)
    listing.set_defaults(run=inventory.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"snaparchive: configuration error: {error}", file=sys.stderr)
        return 2
    except SnaparchiveError as error:
        print(f"snaparchive: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("snaparchive: interrupted", file=sys.stderr)
        return 130
    except (OSError, redis.exceptions.ConnectionError, BrokerError) as error:
        print(f"snaparchive: error: cannot connect: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
