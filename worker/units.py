"""Parsing and printing byte sizes (``64MiB``, ``2GiB``, ``1TiB``)."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1 << 10,
    "M": 1000**2,
    "MB": 1000**2,
    "MIB": 1 << 20,
    "G": 1000**3,
    "GB": 1000**3,
    "GIB": 1 << 30,
    "T": 1000**4,
    "TB": 1000**4,
    "TIB": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` (``"64MiB"``, ``"2GiB"``, ``"1000"``).

    Raises:
      ValueError: When ``text`` is not a size.
    """
    match = _SIZE.match(text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 64MiB, 2GiB or a number of bytes)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(size: float) -> str:
    """Return ``size`` bytes in binary units, like ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """A duration for people, in its largest whole unit: ``45s``, ``12m``, ``5h``, ``3d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"
