"""``snaparchive demo``: the main job end to end on local defaults.

Starts the Exoscale simulator and a local S3 endpoint (moto's server) in this process,
seeds a snapshot, and archives it with the same pipeline steps as the workers
(``archive --local``): export, wait for the operation, stream, verify, upload, commit.
No account, no network, no Docker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from worker.commands.archive import archive_here
from worker.errors import ConfigError
from worker.settings import ExoscaleSettings, S3Settings, Settings, TransferSettings
from worker.units import format_size, parse_size

SNAPSHOT_ID = "3f0c1d9e-5b7a-4c1e-8f2d-6a9b0c1d2e3f"
ZONE = "ch-gva-2"
BUCKET = "snaparchive-demo"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=_size,
        default=parse_size("512MiB"),
        help="data on the simulated disk (default 512MiB); it is exported as a qcow2 image "
        "of a 10 GiB disk, with zero and compressed clusters",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the simulator and S3 endpoint running afterwards, until Ctrl-C",
    )


def run(args: argparse.Namespace) -> int:
    try:
        from moto.server import ThreadedMotoServer

        from worker.simulator import Simulator
    except ImportError as error:
        raise ConfigError(
            f"the demo needs moto's server: pip install 'snaparchive[demo]' ({error})"
        ) from None
    # moto accepts any credentials; boto3 only needs some.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    # moto's server logs every request through werkzeug; the progress bar says enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    s3 = S3Settings(endpoint=f"http://{host}:{port}", bucket=BUCKET)
    simulator = Simulator(
        key="EXOdemo0000000000000000000",
        secret="demo-secret",
        seed=2026,
        image_format="qcow2",
        compressed=True,
    )
    simulator.add_snapshot(SNAPSHOT_ID, args.size, zone=ZONE, name="demo-disk")
    try:
        with simulator.running(host="127.0.0.1", port=0):
            import boto3

            boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region).create_bucket(
                Bucket=BUCKET
            )
            settings = Settings(
                exoscale=ExoscaleSettings(
                    key=simulator.key, secret=simulator.secret, endpoint=simulator.endpoint
                ),
                s3=s3,
                transfer=TransferSettings(allowed_download_hosts=("127.0.0.1",)),
            )
            print(f"Exoscale simulator: {simulator.endpoint}", file=sys.stderr)
            print(f"local S3 endpoint:  {s3.endpoint} (bucket {BUCKET})", file=sys.stderr)
            print(
                f"archiving snapshot {SNAPSHOT_ID} (a qcow2 image of "
                f"{format_size(simulator.image(SNAPSHOT_ID).size)}) from {ZONE}",
                file=sys.stderr,
            )
            code = asyncio.run(archive_here(settings, ZONE, SNAPSHOT_ID, as_json=False))
            if code == 0:
                published = simulator.image_md5(SNAPSHOT_ID)
                print(f"verified: the archive's MD5 equals the published export.md5sum {published}")
            if args.keep:
                print("serving until Ctrl-C (AWS_ACCESS_KEY_ID=demo, any secret)", file=sys.stderr)
                while True:
                    time.sleep(3600)
            return code
    finally:
        s3_server.stop()
