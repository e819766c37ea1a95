"""``snaparchive simulate``: run the Exoscale API simulator in the foreground.

It prints the endpoint, the key and secret, the seeded instances and snapshots and the
environment variables that point snaparchive at it, then serves until SIGINT or SIGTERM. Fault
flags set global faults; ``PUT /_simulator/faults`` changes them while it runs (see
:mod:`worker.simulator.control`). Also runnable as ``python -m worker.simulator.cli``.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import signal
import sys
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from worker import argtypes as types
from worker.argtypes import check_uuid
from worker.settings import EXOSCALE_ZONES
from worker.simulator.account import MAX_SIZE_GIB, check_labels, check_quota_limit
from worker.simulator.disk import IMAGE_FORMATS
from worker.simulator.faults import OPERATION_REASONS, Faults
from worker.simulator.server import EXPORT_SECONDS, URL_TTL, Simulator
from worker.units import GiB, MiB, format_size

DEFAULT_KEY = "EXOsimulator00000000000000"
#: Size of the snapshot seeded when no ``--snapshot`` is given.
DEFAULT_IMAGE_SIZE = 64 * MiB


def _snapshot_spec(text: str) -> tuple[str, int]:
    snapshot_id, sep, size = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ID:SIZE (like <uuid>:64MiB), got {text!r}")
    try:
        snapshot_id = check_uuid(snapshot_id, "snapshot ID")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    image_size = types.size(size)
    if image_size > MAX_SIZE_GIB * GiB:
        raise argparse.ArgumentTypeError(f"{size} is more than the largest snapshot (50 TiB)")
    return snapshot_id, image_size


def _instance_spec(text: str) -> tuple[str, dict[str, str]]:
    instance_id, sep, rest = text.partition(":")
    labels = {}
    for pair in rest.split(",") if sep and rest else []:
        key, eq, value = pair.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(
                f"expected ID[:label=value,...] (like <uuid>:backup=nightly,tier=web), got {text!r}"
            )
        labels[key] = value
    try:
        return check_uuid(instance_id, "instance ID"), check_labels(labels)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quota(text: str) -> int:
    try:
        return check_quota_limit(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected -1 (unlimited) or a whole number, got {text!r}"
        ) from None


def _times(text: str) -> int | None:
    return None if text == "always" else types.non_negative_int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=types.port, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument("--key", default=DEFAULT_KEY, help=f"API key (default {DEFAULT_KEY})")
    parser.add_argument("--secret", help="API secret (default: a random one, printed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of disk contents (default 0)")
    parser.add_argument(
        "--snapshot",
        dest="snapshots",
        action="append",
        type=_snapshot_spec,
        default=[],
        metavar="ID:SIZE",
        help="add a ready snapshot: a UUID and its size, like 64MiB or 2GiB: of the data "
        "written on its disk (qcow2) or of its file (raw) (repeatable; default: one 64MiB "
        "snapshot, unless --instance is given)",
    )
    parser.add_argument(
        "--instance",
        dest="instances",
        action="append",
        type=_instance_spec,
        default=[],
        metavar="ID[:LABEL=VALUE,...]",
        help="add a running instance with these labels, like <uuid>:backup=nightly "
        "(repeatable; create-snapshot works on it)",
    )
    parser.add_argument(
        "--zone",
        choices=EXOSCALE_ZONES,
        default="ch-gva-2",
        help="zone of the instances and snapshots",
    )
    parser.add_argument(
        "--snapshot-quota",
        type=_quota,
        default=-1,
        metavar="N",
        help="the organisation's snapshot limit (default -1: unlimited)",
    )
    parser.add_argument(
        "--export-seconds",
        type=types.seconds,
        default=EXPORT_SECONDS,
        help=f"how long operations stay pending (default {EXPORT_SECONDS:g})",
    )
    parser.add_argument(
        "--url-ttl",
        type=types.seconds,
        default=URL_TTL,
        help=f"lifetime of presigned URLs in seconds (default {URL_TTL:g})",
    )
    parser.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="qcow2",
        help="what exports are: valid qcow2 images of the snapshot's size (default), or raw "
        "files of exactly the size asked for",
    )
    parser.add_argument(
        "--cluster-size",
        type=types.size,
        default=64 << 10,
        help="qcow2 cluster size, 512 bytes to 2MiB (default 64KiB)",
    )
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="qcow2 images store their compressible clusters deflated, as qemu-img convert -c",
    )
    faults = parser.add_argument_group(
        "faults", "global faults; change them while running with PUT /_simulator/faults"
    )
    faults.add_argument(
        "--api-errors", type=types.non_negative_int, default=0, metavar="N", help="next N calls 503"
    )
    faults.add_argument("--api-error-status", type=int, default=503, help="status of those")
    faults.add_argument(
        "--rate-limits",
        type=types.non_negative_int,
        default=0,
        metavar="N",
        help="next N calls 429",
    )
    faults.add_argument(
        "--retry-after", type=types.non_negative_int, default=1, metavar="S", help="429 Retry-After"
    )
    faults.add_argument(
        "--export-failures",
        type=types.non_negative_int,
        default=0,
        metavar="N",
        help="next N exports fail",
    )
    faults.add_argument(
        "--failure-reason", choices=OPERATION_REASONS, default="fault", help="their reason"
    )
    faults.add_argument("--export-stuck", action="store_true", help="exports stay pending")
    faults.add_argument(
        "--quota-errors",
        type=types.non_negative_int,
        default=0,
        metavar="N",
        help="next N snapshots over quota",
    )
    faults.add_argument(
        "--register-unreachable",
        type=types.non_negative_int,
        default=0,
        metavar="N",
        help="next N template registrations cannot reach their URL",
    )
    faults.add_argument(
        "--register-mismatch",
        type=types.non_negative_int,
        default=0,
        metavar="N",
        help="next N template registrations see a checksum mismatch",
    )
    faults.add_argument(
        "--register-stuck", action="store_true", help="template registrations stay pending"
    )
    faults.add_argument(
        "--register-seconds",
        type=types.seconds,
        metavar="S",
        help="template registrations take at least S seconds",
    )
    faults.add_argument("--wrong-md5", action="store_true", help="publish a wrong md5sum")
    faults.add_argument(
        "--slow", type=types.rate, metavar="RATE", help="pace downloads, like 10MiB/s"
    )
    faults.add_argument(
        "--truncate-at", type=types.size, metavar="OFFSET", help="end downloads early at OFFSET"
    )
    faults.add_argument("--reset-at", type=types.size, metavar="OFFSET", help="reset at OFFSET")
    faults.add_argument("--corrupt-at", type=types.size, metavar="OFFSET", help="flip byte OFFSET")
    faults.add_argument(
        "--download-fault-times",
        type=_times,
        default=1,
        metavar="N|always",
        help="downloads each of truncate/reset/corrupt breaks (default 1)",
    )


def _faults(args: argparse.Namespace) -> Faults | None:
    faults = Faults(
        api_errors=args.api_errors,
        api_error_status=args.api_error_status,
        rate_limits=args.rate_limits,
        retry_after=args.retry_after,
        export_failures=args.export_failures,
        failure_reason=args.failure_reason,
        export_stuck=args.export_stuck,
        quota_errors=args.quota_errors,
        register_unreachable=args.register_unreachable,
        register_mismatch=args.register_mismatch,
        register_stuck=args.register_stuck,
        register_seconds=args.register_seconds,
        wrong_md5=args.wrong_md5,
        slow_rate=args.slow,
        truncate_at=args.truncate_at,
        reset_at=args.reset_at,
        corrupt_at=args.corrupt_at,
        download_fault_times=args.download_fault_times,
    )
    return None if faults == Faults() else faults


def _describe(faults: Faults | None) -> str:
    if faults is None:
        return "none"
    default = Faults().to_dict()
    changed = {k: v for k, v in faults.to_dict().items() if v != default[k]}
    return ", ".join(f"{name}={value}" for name, value in changed.items()) or "none"


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status (2 on bad input)."""
    secret = args.secret or secrets.token_hex(16)
    try:
        faults = _faults(args)
        sim = Simulator(
            key=args.key,
            secret=secret,
            seed=args.seed,
            export_seconds=args.export_seconds,
            url_ttl=args.url_ttl,
            snapshot_quota=args.snapshot_quota,
            image_format=args.image_format,
            cluster_size=args.cluster_size,
            compressed=args.compressed,
        )
        instances = [
            sim.add_instance(i, zone=args.zone, labels=labels) for i, labels in args.instances
        ]
        default_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"snaparchive-simulator:{args.seed}"))
        snapshots = args.snapshots
        if not snapshots and not instances:
            snapshots = [(default_id, DEFAULT_IMAGE_SIZE)]
        bodies = [sim.add_snapshot(i, size, zone=args.zone) for i, size in snapshots]
    except ValueError as exc:
        print(f"snaparchive simulate: {exc}", file=sys.stderr)
        return 2
    sim.set_faults(faults)
    stop = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server thread starts, so it inherits the mask and the signals reach
    # sigwait below rather than interrupting the server.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        with ExitStack() as stack:
            try:
                stack.enter_context(sim.running(args.host, args.port))
            except OSError as exc:
                where = f"{args.host}:{args.port}"
                print(f"snaparchive simulate: cannot listen on {where}: {exc}", file=sys.stderr)
                return 1
            _print_banner(sim, instances, bodies, snapshots, faults)
            received = signal.sigwait(stop)
            print(f"{signal.Signals(received).name}: stopping", file=sys.stderr, flush=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0


def _print_banner(
    sim: Simulator,
    instances: list[dict[str, Any]],
    bodies: list[dict[str, Any]],
    snapshots: list[tuple[str, int]],
    faults: Faults | None,
) -> None:
    lines = [
        f"Exoscale API simulator on {sim.url}",
        f"  endpoint  {sim.endpoint}",
        f"  key       {sim.key}",
        f"  secret    {sim.secret}",
        f"  faults    {_describe(faults)}",
    ]
    if instances:
        lines.append("instances:")
    for instance in instances:
        labels = ",".join(f"{k}={v}" for k, v in instance["labels"].items()) or "no labels"
        lines.append(f"  {instance['id']}  {instance['name']}, {labels}")
    lines.append("snapshots:" if bodies else "snapshots: none")
    for body, (snapshot_id, _) in zip(bodies, snapshots, strict=True):
        image = sim.image(snapshot_id)
        lines.append(
            f"  {body['id']}  {image.format} {format_size(image.size)} file, {body['size']} GiB "
            f"disk, {body['state']}"
        )
    lines.append("environment:")
    lines += [f"  export {name}={shlex.quote(value)}" for name, value in sim.env().items()]
    lines.append("Ctrl-C or SIGTERM stops it.")
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and :func:`run` (for ``python -m worker.simulator.cli``)."""
    parser = argparse.ArgumentParser(prog="simulate", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
