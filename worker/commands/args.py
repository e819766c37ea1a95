"""Argument types shared by the subcommands: they reject bad input with a clear message."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable

from worker.settings import EXOSCALE_ZONES


def snapshot_id(text: str) -> str:
    """A snapshot id: a UUID, as Exoscale's are."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a snapshot id (a UUID): {text!r}") from None


def zone(text: str) -> str:
    """An Exoscale zone name."""
    if text not in EXOSCALE_ZONES:
        raise argparse.ArgumentTypeError(
            f"unknown zone {text!r} (one of: {', '.join(EXOSCALE_ZONES)})"
        )
    return text


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)
