"""The argument types shared by the CLI and ``simulate``: what they accept and how they refuse."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest

from worker import argtypes
from worker.settings import EXOSCALE_ZONES
from worker.units import MiB


@pytest.mark.parametrize("zone", [*EXOSCALE_ZONES, "ch-xyz-9", "us-nyca-12"])
def test_a_well_formed_zone_is_accepted_listed_or_not(zone):
    assert argtypes.zone(zone) == zone == argtypes.check_zone(zone)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "mars-1",
        "CH-GVA-2",
        "ch-gva",
        "ch-gva-",
        "ch_gva_2",
        "ch-gva-2\n",  # a plain ^...$ would let this one through
        " ch-gva-2",
        "ch-gva-2.example.com",  # the zone goes into the API's host name
        "ch-gva-2/../x",
        "ch-geneva-2",
    ],
)
def test_a_malformed_zone_is_refused_in_one_line(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        argtypes.zone(text)
    assert str(info.value) == f"zone must be a zone name like ch-gva-2, got {text!r}"
    with pytest.raises(ValueError, match="like ch-gva-2"):
        argtypes.check_zone(text)


def test_a_snapshot_id_is_a_uuid_in_canonical_form():
    raw = "6A1C2B4E3F5D4E7A9B8C0D1E2F3A4B5C"
    assert argtypes.snapshot_id(raw) == "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
    with pytest.raises(argparse.ArgumentTypeError, match="snapshot id must be a UUID, got 'x'"):
        argtypes.snapshot_id("x")
    with pytest.raises(ValueError, match="instance ID must be a UUID"):
        argtypes.check_uuid("x", "instance ID")


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (argtypes.positive_int, "0", "must be at least 1, got 0"),
        (argtypes.positive_int, "two", "expected a whole number, got 'two'"),
        (argtypes.non_negative_int, "-1", "must be at least 0, got -1"),
        (argtypes.port, "65536", "must be 0..65535, got 65536"),
        (argtypes.port, "-1", "must be 0..65535, got -1"),
        (argtypes.seconds, "nan", "seconds must be >= 0"),
        (argtypes.seconds, "-0.5", "seconds must be >= 0"),
        (argtypes.seconds, "soon", "expected a number of seconds"),
        (argtypes.size, "12parsecs", "not a size"),
        (argtypes.rate, "0/s", "at least 1 byte per second"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_bound(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_numbers_in_range_are_read():
    assert argtypes.positive_int("3") == 3
    assert argtypes.non_negative_int("0") == 0
    assert (argtypes.port("0"), argtypes.port("65535")) == (0, 65535)
    assert argtypes.seconds("1.5") == 1.5 and math.isinf(argtypes.seconds("inf"))
    assert argtypes.size("64MiB") == 64 * MiB
    assert argtypes.rate("10MiB/s") == argtypes.rate("10MiB") == 10 * MiB


def test_importing_the_types_imports_neither_the_simulator_nor_aiohttp():
    probe = "import sys, worker.argtypes; print(sorted(m for m in sys.modules if m.split('.')[0] "
    probe += "== 'aiohttp' or m.startswith('worker.simulator')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
