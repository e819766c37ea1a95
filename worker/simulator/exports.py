"""Exports of the simulated API: export-snapshot, presigned URLs and the downloads they allow.

- export-snapshot of a ``ready`` snapshot: the snapshot turns ``exporting`` and a new
  operation is ``pending``. The MD5 of the file starts computing at once in a worker thread.
  Once ``export_seconds`` have passed and the MD5 is known, the operation turns ``success``
  (``reference``: the snapshot, command ``get-snapshot``) and the snapshot ``exported``, with
  ``export.presigned-url`` and ``export.md5sum``. An ``export_failures`` fault makes it
  ``failure`` with the fault's reason instead, and the snapshot returns to ``ready``;
  ``export_stuck`` keeps it ``pending`` for as long as the fault is set.
- A second export of an ``exported`` snapshot is accepted and idempotent: a new operation
  that finishes like the first, while the snapshot stays ``exported`` with the same file and
  MD5 throughout (the file is not regenerated, its URL path does not change).
- Export of a snapshot that is ``exporting``, ``snapshotting`` or ``deleting`` answers HTTP 409;
  of one in ``error``, HTTP 400.
- get-snapshot and list-snapshots hand out a fresh presigned URL for an exported snapshot on
  every call (``X-Amz-Date`` now, a new expiry); older URLs stay valid until their own expiry,
  like S3 presigned URLs. A client whose URL expired gets a new one this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from worker.argtypes import check_uuid
from worker.simulator.account import ApiProblem
from worker.simulator.disk import Image
from worker.simulator.faults import DownloadPlan
from worker.simulator.operations import Operations
from worker.simulator.records import SnapshotRecord


class Exports(Operations):
    """export-snapshot, the ``export`` of snapshot bodies, and presigned downloads."""

    def _snapshot_body(self, snapshot: SnapshotRecord, base: str) -> dict[str, Any]:
        export = None
        if snapshot.state == "exported" and snapshot.export is not None:
            faults = self._faults_for(snapshot.id)
            ttl = self.url_ttl
            md5 = snapshot.export.md5
            if faults is not None:
                if faults.faults.url_ttl is not None:
                    ttl = faults.faults.url_ttl
                if faults.faults.wrong_md5:
                    md5 = hashlib.md5(f"not {md5}".encode()).hexdigest()
            url = self.presigner.url(
                base, snapshot.zone, snapshot.export.id, snapshot.id, self.clock(), ttl
            )
            export = {"presigned-url": url, "md5sum": md5}
        return snapshot.body(self._instances[snapshot.instance_id], export)

    def export_snapshot(self, zone: str, snapshot_id: str) -> dict[str, Any]:
        """export-snapshot: returns the pending operation."""
        with self.lock:
            self._tick()
            snapshot = self._snapshot(zone, snapshot_id)
            if snapshot.state in ("exporting", "snapshotting", "deleting"):
                raise ApiProblem(409, f"snapshot {snapshot_id} is {snapshot.state}")
            if snapshot.state not in ("ready", "exported"):
                raise ApiProblem(
                    400,
                    f"snapshot {snapshot_id} is in state {snapshot.state} and cannot be exported",
                )
            faults = self._faults_for(snapshot_id)
            if snapshot.state == "ready":
                snapshot.state = "exporting"
            return self._start(
                zone,
                "export",
                "snapshot",
                snapshot_id,
                snapshot_id,
                fail_reason=faults.take_export_failure() if faults else None,
                waits_for=snapshot.image.md5_future(),
            )

    # -- downloads --------------------------------------------------------------------------

    def download(
        self,
        zone: str,
        export_id: str,
        snapshot_id: str,
        path: str,
        params: Mapping[str, str],
    ) -> tuple[Image, str]:
        """Check a presigned download and return the image and its MD5 (for the ETag).

        Raises:
          PresignError: When the URL does not hold.
          LookupError: When there is no such file (any more).
        """
        with self.lock:
            self._tick()
            self.presigner.check(path, params, self.clock())
            snapshot = self._snapshots.get(snapshot_id)
            export = snapshot.export if snapshot else None
            if (
                snapshot is None
                or snapshot.zone != zone
                or export is None
                or export.id != export_id
            ):
                raise LookupError(path)
            return snapshot.image, export.md5

    def take_download_plan(self, snapshot_id: str, start: int, end: int) -> DownloadPlan:
        """Spend the download faults for a response carrying ``[start, end)``."""
        with self.lock:
            faults = self._faults_for(snapshot_id)
            return faults.take_download_plan(start, end) if faults else DownloadPlan()

    def count_served(self, snapshot_id: str, count: int) -> None:
        """Record ``count`` more body bytes sent for ``snapshot_id``."""
        with self.lock:
            snapshot = self._snapshots.get(snapshot_id)
            if snapshot is not None:
                snapshot.served += count

    def count_sending(self, snapshot_id: str, change: int) -> None:
        """Record that a download body of ``snapshot_id`` started (+1) or ended (-1)."""
        with self.lock:
            snapshot = self._snapshots.get(snapshot_id)
            if snapshot is not None:
                snapshot.sending += change

    def snapshot_record(self, snapshot_id: str) -> SnapshotRecord:
        """Return a snapshot's record.

        Raises:
          KeyError: When there is no such snapshot.
        """
        with self.lock:
            try:
                return self._snapshots[check_uuid(snapshot_id, "snapshot id")]
            except KeyError:
                raise KeyError(f"no snapshot {snapshot_id} in the simulator") from None
