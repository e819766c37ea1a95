"""The commands measured beside the pipeline: the MD5 limit and the tools a user would pick.

Every command is a bash script that reads ``$URL`` (the presigned URL) and, for uploads,
``$ENDPOINT``, ``$BUCKET`` and ``$KEY`` from its environment, so the command lines in
RESULTS.md are exactly the ones run. Tools are looked up once; a missing one makes its
measurement skipped with a note, never a crash. Nothing is installed or downloaded here
(``./dev.sh bench`` installs Debian's ``rclone`` and ``awscli`` when they are missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

#: The limit: MD5 of the same bytes from the same server, nothing stored.
OPENSSL_MD5 = 'curl -s "$URL" | openssl md5'
#: The server's own ceiling: the same download, discarded.
CURL_NULL = 'curl -s -o /dev/null "$URL"'
#: rclone: copy from the URL into the bucket, then have rclone compute the object's MD5.
#: (An object rclone uploaded in parts carries no MD5 it could report without reading it
#: back: plain ``rclone md5sum`` prints an empty hash, so ``--download`` is needed.)
RCLONE_COPY = 'rclone copyurl "$URL" "store:$BUCKET/$KEY"'
RCLONE_MD5 = 'rclone md5sum --download "store:$BUCKET/$KEY"'
#: curl, MD5 on the side, AWS CLI streaming upload from stdin.
AWS_PIPE = (
    'curl -s "$URL" | tee >(md5sum > "$MD5_FILE") '
    '| "$AWS" s3 cp - "s3://$BUCKET/$KEY" --endpoint-url "$ENDPOINT" --only-show-errors'
)

#: Variables that would point AWS tools elsewhere; this machine sets AWS_CA_BUNDLE, which
#: rclone 1.60 refuses for a plain-http endpoint ("unable to load custom CA bundle").
UNSET = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Tool:
    """A command-line tool: its ``path`` (``None``: missing) and ``version`` line."""

    name: str
    path: str | None
    version: str = ""

    @property
    def present(self) -> bool:
        return self.path is not None


def _version(argv: list[str]) -> str:
    try:
        answer = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (answer.stdout or answer.stderr).strip().splitlines()
    return lines[0] if lines else ""


def find_tools() -> dict[str, Tool]:
    """Look up every tool the measurements use (Debian's ``/usr/bin/aws`` first)."""
    tools: dict[str, Tool] = {}
    for name, flag in (
        ("bash", "--version"),
        ("curl", "--version"),
        ("openssl", "version"),
        ("md5sum", "--version"),
        ("rclone", "version"),
    ):
        path = shutil.which(name)
        tools[name] = Tool(name, path, _version([path, flag]) if path else "")
    aws = "/usr/bin/aws" if os.access("/usr/bin/aws", os.X_OK) else shutil.which("aws")
    tools["aws"] = Tool("aws", aws, _version([aws, "--version"]) if aws else "")
    return tools


def missing(tools: Mapping[str, Tool], *names: str) -> list[str]:
    """Return which of ``names`` are not installed."""
    return [name for name in names if not tools[name].present]


def base_env(credentials: Mapping[str, str]) -> dict[str, str]:
    """This process's environment less :data:`UNSET`, plus the S3 ``credentials``."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(credentials)
    return env


def rclone_env(endpoint: str) -> dict[str, str]:
    """An rclone remote ``store:`` for an S3 endpoint, from the environment (no config file).

    ``no_head``: rclone 1.60 checks each upload with ``HEAD ?versionId=null``, which moto
    answers 400, and then retries the whole copy; skipping the HEAD is rclone's own switch.
    """
    prefix = "RCLONE_CONFIG_STORE_"
    return {
        prefix + "TYPE": "s3",
        prefix + "PROVIDER": "Other",
        prefix + "ENDPOINT": endpoint,
        prefix + "ACCESS_KEY_ID": "testing",
        prefix + "SECRET_ACCESS_KEY": "testing",
        prefix + "REGION": "us-east-1",
        prefix + "FORCE_PATH_STYLE": "true",
        prefix + "NO_HEAD": "true",
        "RCLONE_CONFIG": "/dev/null",
    }


def bash(script: str) -> list[str]:
    """The argv running ``script`` with bash, failing on any failed stage of a pipe."""
    return ["bash", "-o", "pipefail", "-c", script]
