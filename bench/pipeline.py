"""One measured transfer: ``archive_export`` from a presigned URL into an S3 endpoint.

Run as a child process (``python -m bench.pipeline ...``) so that the parent can take its
wall time and peak RSS (``wait4``) and kill it. It is configured like a worker, from the
environment: ``SNAPARCHIVE_S3_ENDPOINT``, ``SNAPARCHIVE_S3_BUCKET``, the transfer's
``SNAPARCHIVE_*`` variables (defaults: 4 uploads at once, 256 MiB of part buffers) and
``EXOSCALE_API_*`` (the simulator's API, for fresh URLs). It prints one JSON object:
``seconds`` (the ``archive_export`` call), ``md5``, ``size``, ``part_size`` and
``resumed_from`` (the checkpoint's offset, or null).

With ``--checkpoint FILE`` every checkpoint is written to ``FILE`` (atomically, as JSON:
the job store's ``save_checkpoint`` in miniature), and a run that finds ``FILE`` resumes
from it with a fresh URL asked from the simulator's API, as the ``transfer_snapshot`` step
does after a worker died. ``--uploads-log FILE`` appends a line per UploadPart started and
finished, flushed at once, so it survives a kill.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TextIO

from bench.imageserver import ZONE, fresh_url
from worker.archive import ArchiveStore
from worker.parts import plan_parts
from worker.s3 import UploadedPart
from worker.settings import ExoscaleSettings, S3Settings, TransferSettings
from worker.transfer import Checkpoint, ExportSource, archive_export


class LoggedStore(ArchiveStore):
    """An :class:`ArchiveStore` that records each UploadPart in a log file.

    Lines: ``start NUMBER SIZE`` before the request, ``done NUMBER SIZE`` after its answer.
    """

    def __init__(self, settings: S3Settings, log: TextIO, *, max_workers: int) -> None:
        super().__init__(settings, max_workers=max_workers)
        self._log = log

    def _write(self, line: str) -> None:
        self._log.write(line + "\n")
        self._log.flush()

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray | memoryview
    ) -> UploadedPart:
        size = memoryview(body).nbytes
        self._write(f"start {number} {size}")
        answer = await super().upload_part(key, upload_id, number, body)
        self._write(f"done {number} {size}")
        return answer


def _save(path: Path, checkpoint: Checkpoint) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(checkpoint.to_dict()))
    os.replace(temporary, path)


async def transfer(args: argparse.Namespace) -> dict[str, Any]:
    """Run the transfer ``args`` describe; return what to print."""
    settings = TransferSettings.from_env(os.environ)
    s3 = S3Settings.from_env(os.environ)
    api = ExoscaleSettings.from_env(os.environ)
    checkpoint_file = Path(args.checkpoint) if args.checkpoint else None
    saved = None
    url = args.url
    if checkpoint_file is not None and checkpoint_file.exists():
        saved = Checkpoint.from_dict(json.loads(checkpoint_file.read_text()))
        url = await fresh_url(api, args.snapshot_id)

    def refresh_url() -> Awaitable[str]:
        return fresh_url(api, args.snapshot_id)

    source = ExportSource(
        provider="exoscale",
        zone=ZONE,
        snapshot_id=args.snapshot_id,
        snapshot_name="bench",
        instance_id=None,
        created_at=None,
        md5=args.md5,
        url=url,
        refresh_url=refresh_url,
    )

    async def on_checkpoint(checkpoint: Checkpoint) -> None:
        if checkpoint_file is not None:
            _save(checkpoint_file, checkpoint)

    # As jobs.context sizes it for a worker's transfers.
    workers = (settings.upload_concurrency + 1) * 4
    log = open(args.uploads_log, "a") if args.uploads_log else None  # noqa: SIM115
    try:
        store = (
            LoggedStore(s3, log, max_workers=workers)
            if log
            else ArchiveStore(s3, max_workers=workers)
        )
        async with store:
            started = time.perf_counter()
            result = await archive_export(
                source, store, settings, checkpoint=saved, on_checkpoint=on_checkpoint
            )
            seconds = time.perf_counter() - started
    finally:
        if log is not None:
            log.close()
    return {
        "seconds": seconds,
        "md5": result.md5,
        "size": result.size,
        "part_size": plan_parts(result.size, settings).part_size,
        "resumed_from": saved.offset if saved else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("--url", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--snapshot-id", required=True)
    parser.add_argument("--checkpoint", help="save checkpoints here; resume from it if present")
    parser.add_argument("--uploads-log", help="append UploadPart start/done lines here")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(transfer(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
