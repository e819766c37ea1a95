"""What the policy commands share: ``--policies FILE``."""

from __future__ import annotations

import argparse
import os

from worker.policy import DEFAULT_FILE, ENV_VARIABLE, PolicyFile, load, policies_path


def add_policies_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        metavar="FILE",
        help=f"the policy file (default: ${ENV_VARIABLE}, else ./{DEFAULT_FILE})",
    )


def load_policies(args: argparse.Namespace) -> PolicyFile:
    """The policy file the command names (PolicyError, exit 2, when it is wrong)."""
    return load(policies_path(os.environ, args.policies))
