"""Argument types shared by the subcommands: they reject bad input with a clear message."""

from __future__ import annotations

import argparse
import uuid

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0: {text!r}")
    return value
