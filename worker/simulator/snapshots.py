"""Snapshots of the simulated API: adding them, listing, deleting, taking and promoting them.

- delete-snapshot: the snapshot turns ``deleting``; when the operation succeeds it is gone
  (404) and its download URLs answer 404 ``NoSuchKey``. HTTP 409 while it is exporting.
- create-snapshot of an instance: a new snapshot (``snapshotting``, then ``ready``) of the
  instance's disk size, with 64 MiB of image (in the simulator's image format) and
  ``created-at`` = now (the simulator's clock); the operation references it. At or over the
  organisation's snapshot quota (see :mod:`.instances`) it is refused with HTTP
  :data:`QUOTA_EXCEEDED_STATUS` and a ``{"message": ...}`` body.
- promote-snapshot-to-template: the operation's success creates a private template
  (``get-template``).

Exports and downloads are in :mod:`.exports`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from worker.argtypes import check_uuid
from worker.settings import EXOSCALE_ZONES
from worker.simulator.account import (
    MAX_SIZE_GIB,
    MIN_SIZE_GIB,
    ApiProblem,
    boolean_field,
    required_field,
    string_field,
)
from worker.simulator.exports import Exports
from worker.simulator.records import ExportRecord, SnapshotRecord, TemplateRecord
from worker.units import GiB, MiB

#: Image size of snapshots taken through create-snapshot.
CREATED_IMAGE_SIZE = 64 * MiB
#: States a snapshot may be added in.
ADDABLE_STATES = ("ready", "exported", "snapshotting", "error")
#: HTTP status of create-snapshot over the snapshot quota. Unconfirmed: neither the spec
#: (which documents only 200) nor the docs state it; 403 is the status of the API's
#: ``forbidden`` error class, the one a quota refusal falls into in Exoscale's error scheme.
QUOTA_EXCEEDED_STATUS = 403


class Snapshots(Exports):
    """The snapshot calls, and :meth:`add_snapshot` for tests and ``simulate``."""

    def add_snapshot(
        self,
        snapshot_id: str,
        image_size: int,
        zone: str = "ch-gva-2",
        state: str = "ready",
        name: str | None = None,
        size_gib: int | None = None,
        instance_id: str | None = None,
        image_format: str | None = None,
    ) -> SnapshotRecord:
        """Add a snapshot (see :meth:`worker.simulator.Simulator.add_snapshot`).

        Raises:
          ValueError: On a malformed id, a bad size, zone or state, or a duplicate id.
        """
        snapshot_id = check_uuid(snapshot_id, "snapshot id")
        if zone not in EXOSCALE_ZONES:
            raise ValueError(f"unknown zone {zone!r} (one of {', '.join(EXOSCALE_ZONES)})")
        if state not in ADDABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(ADDABLE_STATES)}, got {state!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
            raise ValueError(f"image_size must be a number of bytes >= 0, got {image_size!r}")
        if size_gib is None:
            size_gib = max(MIN_SIZE_GIB, math.ceil(image_size / GiB))
        if not MIN_SIZE_GIB <= size_gib <= MAX_SIZE_GIB:
            raise ValueError(
                f"snapshot size must be {MIN_SIZE_GIB}..{MAX_SIZE_GIB} GiB, got {size_gib}"
            )
        if name is not None and not 1 <= len(name) <= 255:
            raise ValueError("snapshot name must be 1..255 characters")
        if instance_id is not None:
            instance_id = check_uuid(instance_id, "instance id")
        images = self.images
        if image_format is not None:
            images = dataclasses.replace(images, format=image_format)
        image = images.make(self.pool, snapshot_id, image_size, size_gib * GiB)
        # Hash outside the lock: an exported snapshot needs its MD5 before it can be listed.
        md5 = image.compute_md5() if state == "exported" else None
        with self.lock:
            if snapshot_id in self._snapshots:
                raise ValueError(f"snapshot {snapshot_id} already exists")
            instance = self._instance(
                instance_id or self._derived_id("instance", snapshot_id), zone, size_gib
            )
            instance.snapshot_ids.append(snapshot_id)
            record = SnapshotRecord(
                id=snapshot_id,
                zone=zone,
                name=name or f"{instance.name}-snapshot",
                created_at=self.clock(),
                state=state,
                size=size_gib,
                image=image,
                instance_id=instance.id,
                export=ExportRecord(str(uuid.uuid4()), md5) if md5 is not None else None,
            )
            self._snapshots[snapshot_id] = record
            return record

    def list_snapshots(self, zone: str, base: str) -> dict[str, Any]:
        """list-snapshots; ``base`` is the scheme and authority for presigned URLs."""
        with self.lock:
            self._tick()
            snapshots = [s for s in self._snapshots.values() if s.zone == zone]
            return {"snapshots": [self._snapshot_body(s, base) for s in snapshots]}

    def get_snapshot(self, zone: str, snapshot_id: str, base: str) -> dict[str, Any]:
        """get-snapshot, with a fresh presigned URL when exported."""
        with self.lock:
            self._tick()
            return self._snapshot_body(self._snapshot(zone, snapshot_id), base)

    def delete_snapshot(self, zone: str, snapshot_id: str) -> dict[str, Any]:
        """delete-snapshot: returns the pending operation."""
        with self.lock:
            self._tick()
            snapshot = self._snapshot(zone, snapshot_id)
            if snapshot.state in ("exporting", "snapshotting", "deleting"):
                raise ApiProblem(409, f"snapshot {snapshot_id} is {snapshot.state}")
            snapshot.state = "deleting"
            return self._start(zone, "delete", "snapshot", snapshot_id, snapshot_id)

    def create_snapshot(self, zone: str, instance_id: str) -> dict[str, Any]:
        """create-snapshot of an instance: returns the pending operation.

        Raises:
          ApiProblem: 404 for an unknown instance, :data:`QUOTA_EXCEEDED_STATUS` over the
            snapshot quota (or when a ``quota_errors`` fault fires).
        """
        with self.lock:
            self._tick()
            instance = self._instance_in(zone, instance_id)
            usage, limit = len(self._snapshots), self.snapshot_quota
            faults = self._global_faults
            if (faults is not None and faults.take_quota_error()) or 0 <= limit <= usage:
                shown = limit if limit >= 0 else usage
                raise ApiProblem(
                    QUOTA_EXCEEDED_STATUS,
                    f"Quota exceeded for resource snapshot: limit {shown} reached",
                )
            snapshot_id = str(uuid.uuid4())
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.clock()))
            self.add_snapshot(
                snapshot_id,
                CREATED_IMAGE_SIZE,
                zone=zone,
                state="snapshotting",
                # Named like Exoscale's: instance, volume and the moment it was taken.
                name=f"{instance.name}_ROOT_{stamp}"[:255],
                size_gib=instance.disk_size,
                instance_id=instance.id,
            )
            return self._start(zone, "create-snapshot", "snapshot", snapshot_id, snapshot_id)

    def promote_snapshot(
        self, zone: str, snapshot_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """promote-snapshot-to-template: returns the pending operation."""
        name = required_field(body, "name", max_length=255)
        description = string_field(body, "description", max_length=4096)
        default_user = string_field(body, "default-user", max_length=255)
        ssh_key_enabled = boolean_field(body, "ssh-key-enabled")
        password_enabled = boolean_field(body, "password-enabled")
        with self.lock:
            self._tick()
            snapshot = self._snapshot(zone, snapshot_id)
            if snapshot.state not in ("ready", "exported"):
                raise ApiProblem(409, f"snapshot {snapshot_id} is {snapshot.state}")
            source = self._templates[self._instances[snapshot.instance_id].template_id]
            template = TemplateRecord(
                id=str(uuid.uuid4()),
                zone=zone,
                name=name,
                # The template object allows 255 characters where promote accepts 4096.
                description=(description or "")[:255],
                created_at=self.clock(),
                size=snapshot.image.size or 1,
                checksum="",
                family=source.family,
                boot_mode=source.boot_mode,
                default_user=default_user or source.default_user,
                ssh_key_enabled=source.ssh_key_enabled
                if ssh_key_enabled is None
                else ssh_key_enabled,
                password_enabled=(
                    source.password_enabled if password_enabled is None else password_enabled
                ),
            )
            return self._start(
                zone,
                "promote",
                "template",
                template.id,
                snapshot_id,
                waits_for=snapshot.image.md5_future(),
                payload=template,
            )
