"""Start-up of the CLI: a command imports what it needs, not the simulator (issue 10)."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from worker.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(sorted(m for m in ("worker.simulator", "aiohttp.web") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["status", "--help"], ["archive", "--help"], ["snapshots", "list", "--help"]],
)
def test_a_command_that_does_not_simulate_does_not_import_the_simulator(argv):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_simulator_command_still_has_its_arguments():
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--snapshot" in out.stdout
