"""``snaparchive restore``: read an archive back, verified: to a file, to stdout, or as a
bootable Exoscale template in any zone.

The target is one of ``--output PATH`` (``-``: stdout), ``--verify`` (read and check only),
``--template NAME`` (:mod:`worker.commands.restore_template`) or ``--genesis-region REGION``
(:mod:`worker.commands.restore_genesis`); :data:`TARGETS` maps each to the function that runs
it, so a new target is one more entry.

To a file, the objects are read by ranged GETs several at a time (:mod:`worker.reader`) and
the file is renamed into place only after the whole image verified. With ``--output -`` the
bytes go to stdout as they are read, so a mismatch can only be reported at the end.

Exit status: 0 restored (or verified); 1 there is no archive, an object it lists is missing,
the store cannot be read, or the image cannot be written (one line naming the object or the
file); 2 usage errors, among them an ``--output`` that cannot be a file (a directory, a device,
a path whose directory does not exist), found before anything is read; 3 verification failed
(the bytes do not hash to the archive's MD5, an object's size is not the manifest's, a
malformed manifest, a checksum refusal).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.errors import StoreError
from worker.manifest import BOOT_MODES, Manifest
from worker.progress import ProgressDisplay
from worker.reader import CONCURRENCY
from worker.restore import OutputError, restore_to_file, stream_archive, stream_writer
from worker.settings import Settings, load
from worker.units import format_size

#: Options that only a restore as a template takes (``dest``, as the user spells it).
TEMPLATE_OPTIONS = {
    "target_zone": "--target-zone",
    "boot_mode": "--boot-mode",
    "default_user": "--default-user",
    "disable_password": "--disable-password",
    "disable_ssh_key": "--disable-ssh-key",
}
#: Options that only a restore at Genesis Cloud takes.
GENESIS_OPTIONS = {"name": "--name"}
#: Options of a restore that runs as a job (template, Genesis Cloud).
JOB_OPTIONS = {"wait": "--wait", "local": "--local", "json": "--json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument(
        "--zone", required=True, type=types.zone, help="the zone the snapshot was archived from"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", "-o", metavar="PATH", help="write the image here (- stdout)")
    target.add_argument("--verify", action="store_true", help="only read and verify")
    target.add_argument(
        "--template", metavar="NAME", help="register it as an Exoscale template named NAME"
    )
    target.add_argument(
        "--genesis-region", metavar="REGION", help="make a Genesis Cloud snapshot in REGION"
    )
    _job_arguments(parser)


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a restore as a template or at Genesis Cloud (jobs, like an archive)."""
    job = parser.add_argument_group("as a template or at Genesis Cloud")
    job.add_argument("--wait", action="store_true", help="follow the job to its end")
    job.add_argument("--local", action="store_true", help="run the job in this process")
    job.add_argument("--json", action="store_true", help="print one JSON object")
    group = parser.add_argument_group("as a template (with --template NAME)")
    group.add_argument(
        "--target-zone", type=types.zone, help="register the template here (default: --zone)"
    )
    group.add_argument("--boot-mode", choices=BOOT_MODES, help="override the source's boot mode")
    group.add_argument("--default-user", metavar="USER", help="override the default user")
    group.add_argument(
        "--disable-password", action="store_true", help="register without password login"
    )
    group.add_argument(
        "--disable-ssh-key", action="store_true", help="register without SSH key login"
    )
    genesis = parser.add_argument_group("at Genesis Cloud (with --genesis-region REGION)")
    genesis.add_argument("--name", help="the Genesis Cloud snapshot's name")


def _target(args: argparse.Namespace) -> str:
    """Which target the arguments name: ``file``, ``verify``, ``template`` or ``genesis``."""
    if args.template is not None:
        return "template"
    if args.genesis_region is not None:
        return "genesis"
    return "verify" if args.verify else "file"


def run(args: argparse.Namespace) -> int:
    target = _target(args)
    allowed = {
        "template": TEMPLATE_OPTIONS | JOB_OPTIONS,
        "genesis": GENESIS_OPTIONS | JOB_OPTIONS,
    }.get(target, {})
    every = TEMPLATE_OPTIONS | GENESIS_OPTIONS | JOB_OPTIONS
    given = [
        flag for dest, flag in every.items() if getattr(args, dest, None) and dest not in allowed
    ]
    if given:
        goes = "--genesis-region" if given[0] in GENESIS_OPTIONS.values() else "--template"
        if given[0] in JOB_OPTIONS.values():
            goes = "--template or --genesis-region"
        print(f"snaparchive: error: {given[0]} goes with {goes}", file=sys.stderr)
        return 2
    return TARGETS[target](args)


def output_problem(text: str) -> str | None:
    """Return why ``text`` cannot be the path of the restored image, or ``None``.

    The image is written beside it and renamed over it, so it must name a file (new, or a
    regular file to replace) in an existing directory we may write in.
    """
    path = Path(text)
    if text.endswith("/") or path.name in ("", ".", "..") or path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(mode):
        return "is not a regular file (write to a device or pipe with --output -)"
    return None


async def find_manifest(store: ArchiveStore, zone: str, snapshot_id: str) -> Manifest:
    """The manifest of the archive of ``zone``/``snapshot_id``, checked.

    Raises:
      NotFound: There is no archive of it.
      StoreIntegrityError: Its manifest is malformed (naming the key).
      StoreError: The store failed or refused (naming the manifest's key).
    """
    key = store.manifest_key("exoscale", zone, snapshot_id)
    try:
        return await store.require_archive("exoscale", zone, snapshot_id)
    except StoreError as error:
        raise StoreError(f"cannot read the manifest {key}: {error}") from None


def _to_file(args: argparse.Namespace) -> int:
    """``--output PATH``, ``--output -`` and ``--verify``."""
    if args.output not in (None, "-"):
        problem = output_problem(args.output)
        if problem:
            print(f"snaparchive: error: --output {args.output}: {problem}", file=sys.stderr)
            return 2
    settings = load()
    settings.s3.require_bucket()
    display = ProgressDisplay(sys.stderr)
    try:
        manifest, md5 = asyncio.run(_read_back(settings, args, display))
    finally:
        display.close()
    where = "verified in place" if args.verify else f"restored to {args.output}"
    print(
        f"{args.zone}/{args.snapshot_id}: {format_size(manifest.size)}, md5 {md5} {where}",
        file=sys.stderr,
    )
    return 0


async def _read_back(
    settings: Settings, args: argparse.Namespace, display: ProgressDisplay
) -> tuple[Manifest, str]:
    async with ArchiveStore(settings.s3, max_workers=CONCURRENCY + 1) as store:
        manifest = await find_manifest(store, args.zone, args.snapshot_id)
        if args.verify:
            md5 = await stream_archive(store, manifest, None, display.update)
        elif args.output == "-":
            md5 = await _to_stdout(store, manifest, display)
        else:
            md5 = await restore_to_file(store, manifest, Path(args.output), display.update)
    return manifest, md5


async def _to_stdout(store: ArchiveStore, manifest: Manifest, display: ProgressDisplay) -> str:
    try:
        write = stream_writer(sys.stdout.buffer, "stdout")
        md5 = await stream_archive(store, manifest, write, display.update)
        sys.stdout.buffer.flush()
    except OSError as exc:
        _drop_stdout()
        raise OutputError(f"cannot write stdout: {exc.strerror or exc}") from None
    except OutputError:
        _drop_stdout()
        raise
    return md5


def _drop_stdout() -> None:
    """Point stdout at /dev/null: a reader that went away (``| head``) would make the
    interpreter's last flush print a traceback of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _to_template(args: argparse.Namespace) -> int:
    from worker.commands.restore_template import run as restore_as_template

    return restore_as_template(args)


def _to_genesis(args: argparse.Namespace) -> int:
    from worker.commands.restore_genesis import run as restore_at_genesis

    return restore_at_genesis(args)


#: Target → the function that restores to it.
TARGETS: dict[str, Callable[[argparse.Namespace], int]] = {
    "file": _to_file,
    "verify": _to_file,
    "template": _to_template,
    "genesis": _to_genesis,
}
