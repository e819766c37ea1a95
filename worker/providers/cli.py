"""``snaparchive snapshots list``: every snapshot across clouds, and whether it is archived.

Exit status: 0 when every provider asked answered (skipped ones are notes on stderr),
1 when one failed (its error on stderr; the others' snapshots are still printed),
2 for usage and configuration errors (a malformed variable, a provider asked for by name
without its credential).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from worker.errors import ConfigError
from worker.providers.inventory import PROVIDERS, Inventory, UsageError, collect
from worker.units import format_size

COLUMNS = ("PROVIDER", "REGION", "ID", "NAME", "STATUS", "SIZE", "CREATED", "ARCHIVED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``snapshots list`` to ``parser``."""
    parser.add_argument(
        "--provider",
        action="extend",
        nargs="+",
        choices=list(PROVIDERS),
        metavar="P",
        help=f"only these providers ({', '.join(PROVIDERS)}); default: every one configured",
    )
    parser.add_argument(
        "--region",
        "--zone",
        dest="region",
        metavar="R",
        help="only this region (an Exoscale zone, a Genesis Cloud region, a Gcore region id)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array of records")


def run(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """List snapshots as ``args`` ask and return the exit status.

    Parameters:
      args: Parsed by a parser given :func:`add_arguments`.
      env: Credentials and settings (default ``os.environ``).
      out, err: Where records and notes go (default stdout and stderr).
    """
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    providers = list(dict.fromkeys(args.provider)) if args.provider else None
    try:
        inventory = asyncio.run(collect(env, providers=providers, region=args.region))
    except UsageError as exc:
        print(f"snaparchive: error: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"snaparchive: configuration error: {exc}", file=err)
        return 2
    if args.json:
        records = [r.to_json(inventory.is_archived(r)) for r in inventory.records]
        json.dump(records, out, indent=2)
        out.write("\n")
    else:
        _table(inventory, out)
    for note in inventory.notes:
        print(f"note: {note}", file=err)
    for failure in inventory.failures:
        print(f"error: {failure.message}", file=err)
    return 1 if inventory.failures else 0


def _table(inventory: Inventory, out: TextIO) -> None:
    rows: list[tuple[str, ...]] = [COLUMNS]
    for r in inventory.records:
        archived = inventory.is_archived(r)
        status = r.status if r.raw_status in (None, r.status) else f"{r.status} ({r.raw_status})"
        rows.append(
            (
                r.provider,
                r.region,
                r.id,
                r.name,
                status,
                "-" if r.size_bytes is None else format_size(r.size_bytes),
                r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "-",
                "unknown" if archived is None else ("yes" if archived else "no"),
            )
        )
    # Names come from the clouds' APIs: no escape sequences reach the terminal.
    rows = [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
