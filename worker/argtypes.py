"""Argument types of the command line, shared by every subcommand and by ``simulate``.

Each type turns one argument into a value or refuses it with a one-line message
(:class:`argparse.ArgumentTypeError`: argparse prints it after the usage and exits 2). The
checks behind them (:func:`check_uuid`, :func:`check_zone`) raise ValueError instead, for code
that reads values from elsewhere than a command line. Importing this module imports neither
the simulator nor aiohttp: ``snaparchive --help`` stays fast.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable

from worker.settings import ZONE_NAME
from worker.units import parse_size


def check_uuid(value: str, what: str) -> str:
    """Return ``value`` in canonical form (lower case, with dashes), or raise ValueError
    naming ``what`` (``snapshot id``)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{what} must be a UUID, got {value!r}") from None


def check_zone(value: str) -> str:
    """Return ``value`` if it is shaped like an Exoscale zone name, or raise ValueError.

    Whether the zone exists is not checked: the API answers for an unknown one."""
    if not isinstance(value, str) or not ZONE_NAME.fullmatch(value):
        raise ValueError(f"zone must be a zone name like ch-gva-2, got {value!r}")
    return value


def snapshot_id(text: str) -> str:
    """A snapshot id: a UUID, as Exoscale's are."""
    try:
        return check_uuid(text, "snapshot id")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def zone(text: str) -> str:
    """An Exoscale zone name: any of the right shape (:data:`worker.settings.ZONE_NAME`)."""
    try:
        return check_zone(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Return an argument type: a whole number of at least ``minimum`` and, when given, at
    most ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum}..{maximum}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


#: A whole number >= 1 (a thread or process count).
positive_int = whole_number(1)
#: A whole number >= 0 (a count of things that may be none).
non_negative_int = whole_number(0)
#: A TCP port, 0..65535 (0: any free one).
port = whole_number(0, 65535)


def seconds(text: str) -> float:
    """A duration in seconds: a number >= 0, fractions allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return value


def size(text: str) -> int:
    """A number of bytes, with a unit or not: ``4096``, ``64MiB``, ``2GiB`` (an offset too)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate(text: str) -> int:
    """Bytes per second, at least 1: ``10MiB/s`` (the ``/s`` may be left out)."""
    value = size(text.removesuffix("/s"))
    if value < 1:
        raise argparse.ArgumentTypeError("the rate must be at least 1 byte per second")
    return value
