"""The simulated account: snapshots, instances, templates and operations of every zone.

All of it sits behind one lock, so the server's event loop thread and a test's thread may call
in at the same time. Time comes from an injectable clock; operations finish lazily, when any
call looks at the state after their time has come.

State machine, as a client sees it:

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
- delete-snapshot: the snapshot turns ``deleting``; when the operation succeeds it is gone
  (404) and its download URLs answer 404 ``NoSuchKey``. HTTP 409 while it is exporting.
- create-snapshot of an instance: a new snapshot (``snapshotting``, then ``ready``) of the
  instance's disk size, with a 64 MiB image and ``created-at`` = now (the simulator's clock);
  the operation references it. Over the snapshot quota it is refused (see below).
- delete-instance: the operation's success removes the instance and, as Exoscale does, every
  snapshot of it (their download URLs answer 404 from then on).
- list-instances: the instances of the zone. Its ``labels`` query parameter is an untyped
  string in the spec; the simulator reads it as ``key=value`` pairs separated by spaces (the
  form Exoscale's own karpenter provider sends) and lists the instances that carry all of
  them; anything else is a 400. snaparchive itself filters on its side and does not send it.
  ``ip-address`` matches the public IP; ``manager-id``/``manager-type`` match nothing (no
  instance pools here).
- Quotas are per organisation: ``snapshot`` counts the snapshots of every zone (``deleting``
  ones until they are gone), ``template`` the private templates, ``user_vm`` the instances
  (the names exoscale/cli uses). Limits are -1 (unlimited) unless set; the snapshot limit is
  ``snapshot_quota``. create-snapshot at or over the limit answers HTTP
  :data:`QUOTA_EXCEEDED_STATUS` with a ``{"message": ...}`` body.
- promote-snapshot-to-template: the operation's success creates a private template
  (``get-template``).
- register-template: the simulator reads ``url`` over HTTP (:mod:`.fetch`, any host) and
  hashes what it read. The operation stays ``pending`` until the URL is read and the usual
  delay has passed, then ends ``success`` with ``reference.id`` the new private template (its
  ``size`` the bytes read) when the MD5 equals ``checksum``, or ``failure``: reason
  ``incorrect`` for a checksum mismatch or a URL its server refused (4xx), ``unavailable``
  for one that failed (5xx), could not be reached or broke off, ``interrupted`` when the
  simulator stopped meanwhile, each with a one-line ``message`` naming the host, never the URL.
  These reasons are the simulator's choice: Exoscale documents none for registrations.
  Templates belong to the zone of the endpoint used.
- list-templates: ``visibility`` ``public`` (the default, as in egoscale) or ``private``, and
  ``family``; the zone's public Ubuntu template always exists.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any
from urllib.parse import urlsplit

from worker.argtypes import check_uuid
from worker.settings import EXOSCALE_ZONES
from worker.simulator.disk import BlockPool, DiskImage
from worker.simulator.faults import ActiveFaults, DownloadPlan, Faults
from worker.simulator.fetch import FetchResult, TemplateFetcher
from worker.simulator.presign import Presigner
from worker.simulator.records import (
    ExportRecord,
    InstanceRecord,
    OperationRecord,
    SnapshotRecord,
    TemplateRecord,
)
from worker.units import GiB, MiB

#: Snapshot size bounds of the API, in GiB.
MIN_SIZE_GIB, MAX_SIZE_GIB = 10, 51200
#: Image size of snapshots taken through create-snapshot.
CREATED_IMAGE_SIZE = 64 * MiB
#: States a snapshot may be added in.
ADDABLE_STATES = ("ready", "exported", "snapshotting", "error")
#: HTTP status of create-snapshot over the snapshot quota. Unconfirmed: neither the spec
#: (which documents only 200) nor the docs state it; 403 is the status of the API's
#: ``forbidden`` error class, the one a quota refusal falls into in Exoscale's error scheme.
QUOTA_EXCEEDED_STATUS = 403
#: Quota entities the simulator counts (names as in exoscale/cli's ``limits``).
QUOTA_ENTITIES = ("snapshot", "template", "user_vm")
#: Label keys: the spec says only "string"; no space and no "=", so a filter can name them.
_LABEL_KEY = re.compile(r"^[^\s=]{1,255}$")

_NAMESPACE = uuid.UUID("9d0c6f3e-5a43-4c4e-9a55-3b7f2f3c1d20")


class ApiProblem(Exception):
    """A request the API refuses.

    Parameters:
      status: The HTTP status.
      message: Goes into the ``{"message": ...}`` body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_quota_limit(limit: int) -> int:
    """Return ``limit`` if it is a quota limit (-1: unlimited, else >= 0), or raise ValueError."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < -1:
        raise ValueError(f"a quota limit must be -1 (unlimited) or a whole number, got {limit!r}")
    return limit


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Return ``labels`` as a dict, or raise ValueError naming the bad key or value."""
    if labels is None:
        return {}
    checked = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} must be 1..255 characters without spaces or =")
        if not isinstance(value, str) or len(value) > 255:
            raise ValueError(f"label {key} must have a string value of at most 255 characters")
        checked[key] = value
    return checked


def parse_label_filter(text: str) -> dict[str, str]:
    """Read list-instances' ``labels`` parameter: ``key=value`` pairs separated by spaces.

    Raises:
      ApiProblem: 400 when a pair is not ``key=value``.
    """
    wanted = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiProblem(400, f"labels must be key=value pairs separated by spaces: {pair!r}")
        wanted[key] = value
    return wanted


class SimState:
    """Everything the simulated API knows.

    Parameters:
      seed: Seeds disk contents and derived ids.
      export_seconds: How long operations stay pending at least.
      url_ttl: Default lifetime of presigned URLs, in seconds.
      clock: Returns the current UNIX time (default: ``time.time``).
      snapshot_quota: The organisation's snapshot limit (-1: unlimited).
    """

    def __init__(
        self,
        seed: int,
        export_seconds: float,
        url_ttl: float,
        clock: Callable[[], float],
        snapshot_quota: int = -1,
    ) -> None:
        self.seed = seed
        self.export_seconds = export_seconds
        self.url_ttl = url_ttl
        self.clock = clock
        self.snapshot_quota = check_quota_limit(snapshot_quota)
        self.lock = threading.RLock()
        self.pool = BlockPool(seed)
        self.presigner = Presigner()
        #: Reads register-template URLs; set while the server runs.
        self.fetcher: TemplateFetcher | None = None
        self._fetches: list[Future[FetchResult]] = []
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._templates: dict[str, TemplateRecord] = {}
        self._operations: dict[str, OperationRecord] = {}
        self._global_faults: ActiveFaults | None = None
        self._faults: dict[str, ActiveFaults] = {}

    # -- setup ------------------------------------------------------------------------------

    def _derived_id(self, *parts: object) -> str:
        return str(uuid.uuid5(_NAMESPACE, ":".join(map(str, (self.seed, *parts)))))

    def _public_template(self, zone: str) -> TemplateRecord:
        template_id = self._derived_id("template", zone)
        if template_id not in self._templates:
            digest = hashlib.md5(template_id.encode()).hexdigest()
            self._templates[template_id] = TemplateRecord(
                id=template_id,
                zone=zone,
                name="Linux Ubuntu 24.04 LTS 64-bit",
                description="Ubuntu 24.04 LTS (Noble Numbat)",
                created_at=self.clock(),
                size=10 * GiB,
                checksum=digest,
                url=f"https://sos-{zone}.exo.io/templates/ubuntu-24.04-{digest[:8]}.qcow2",
                family="ubuntu",
                boot_mode="uefi",
                default_user="ubuntu",
                build="2025-01-15-" + digest[8:14],
                version="24.04",
                maintainer="Canonical",
                visibility="public",
            )
        return self._templates[template_id]

    def _instance(
        self,
        instance_id: str,
        zone: str,
        disk_size: int,
        name: str | None = None,
        template_id: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> InstanceRecord:
        instance = self._instances.get(instance_id)
        if instance is None:
            raw = uuid.UUID(instance_id).bytes
            instance = self._instances[instance_id] = InstanceRecord(
                id=instance_id,
                zone=zone,
                name=name or f"vm-{instance_id[:8]}",
                created_at=self.clock(),
                template_id=template_id or self._public_template(zone).id,
                disk_size=disk_size,
                public_ip=f"194.182.{raw[0]}.{raw[1] % 254 + 1}",
                mac_address="06:" + ":".join(f"{b:02x}" for b in raw[2:7]),
                instance_type_id=self._derived_id("instance-type", "standard.medium"),
                labels=labels or {},
            )
        elif instance.zone != zone:
            raise ValueError(f"instance {instance_id} is in zone {instance.zone}, not {zone}")
        return instance

    def add_instance(
        self,
        instance_id: str,
        zone: str = "ch-gva-2",
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        disk_size: int = MIN_SIZE_GIB,
        template_id: str | None = None,
        boot_mode: str | None = None,
        default_user: str | None = None,
        ssh_key_enabled: bool | None = None,
        password_enabled: bool | None = None,
    ) -> InstanceRecord:
        """Add an instance (see :meth:`worker.simulator.Simulator.add_instance`).

        Raises:
          ValueError: On a malformed id, name, label, size or zone, a duplicate id, an unknown
            template, or template settings given together with ``template_id``.
        """
        instance_id = check_uuid(instance_id, "instance id")
        if zone not in EXOSCALE_ZONES:
            raise ValueError(f"unknown zone {zone!r} (one of {', '.join(EXOSCALE_ZONES)})")
        if name is not None and not 1 <= len(name) <= 255:
            raise ValueError("instance name must be 1..255 characters")
        checked_labels = check_labels(labels)
        if isinstance(disk_size, bool) or not isinstance(disk_size, int):
            raise ValueError(f"disk size must be a whole number of GiB, got {disk_size!r}")
        if not MIN_SIZE_GIB <= disk_size <= MAX_SIZE_GIB:
            raise ValueError(f"disk size must be {MIN_SIZE_GIB}..{MAX_SIZE_GIB} GiB")
        if boot_mode not in (None, "legacy", "uefi"):
            raise ValueError(f"boot mode must be legacy or uefi, got {boot_mode!r}")
        if default_user is not None and not 1 <= len(default_user) <= 255:
            raise ValueError("default user must be 1..255 characters")
        settings = (boot_mode, default_user, ssh_key_enabled, password_enabled)
        custom = any(value is not None for value in settings)
        if custom and template_id is not None:
            raise ValueError("give template_id or the template's settings, not both")
        with self.lock:
            if instance_id in self._instances:
                raise ValueError(f"instance {instance_id} already exists")
            if template_id is not None:
                template_id = check_uuid(template_id, "template id")
                template = self._templates.get(template_id)
                if template is None or template.zone != zone:
                    raise ValueError(f"no template {template_id} in zone {zone}")
            elif custom:
                # The instance was built from a private template with these settings.
                public = self._public_template(zone)
                template = TemplateRecord(
                    id=self._derived_id("template", instance_id),
                    zone=zone,
                    name=f"{name or 'vm-' + instance_id[:8]} image",
                    description="custom template",
                    created_at=self.clock(),
                    size=10 * GiB,
                    checksum=hashlib.md5(instance_id.encode()).hexdigest(),
                    boot_mode=boot_mode or "legacy",
                    default_user=default_user,
                    ssh_key_enabled=public.ssh_key_enabled
                    if ssh_key_enabled is None
                    else ssh_key_enabled,
                    password_enabled=(
                        public.password_enabled if password_enabled is None else password_enabled
                    ),
                )
                self._templates[template.id] = template
                template_id = template.id
            return self._instance(instance_id, zone, disk_size, name, template_id, checked_labels)

    def add_snapshot(
        self,
        snapshot_id: str,
        image_size: int,
        zone: str = "ch-gva-2",
        state: str = "ready",
        name: str | None = None,
        size_gib: int | None = None,
        instance_id: str | None = None,
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
        image = DiskImage(self.pool, snapshot_id, image_size, virtual_size=size_gib * GiB)
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

    # -- faults -----------------------------------------------------------------------------

    def set_faults(self, faults: Faults | None, snapshot_id: str | None = None) -> None:
        """Set (or with None, clear) the global faults or one snapshot's."""
        active = ActiveFaults(faults) if faults is not None else None
        with self.lock:
            if snapshot_id is None:
                self._global_faults = active
            elif active is None:
                self._faults.pop(check_uuid(snapshot_id, "snapshot id"), None)
            else:
                self._faults[check_uuid(snapshot_id, "snapshot id")] = active

    def fault_settings(self) -> dict[str, Any]:
        """Return the faults in force: ``{"global": {...} | None, "snapshots": {id: {...}}}``."""
        with self.lock:
            return {
                "global": self._global_faults.faults.to_dict() if self._global_faults else None,
                "snapshots": {k: v.faults.to_dict() for k, v in self._faults.items()},
            }

    def _faults_for(self, snapshot_id: str | None) -> ActiveFaults | None:
        if snapshot_id is not None and snapshot_id in self._faults:
            return self._faults[snapshot_id]
        return self._global_faults

    def take_api_fault(self, snapshot_id: str | None) -> tuple[int, dict[str, str]] | None:
        """Spend an API fault for a call concerning ``snapshot_id`` (None: no snapshot)."""
        with self.lock:
            faults = self._faults_for(snapshot_id)
            return faults.take_api_fault() if faults else None

    def operation_snapshot(self, operation_id: str) -> str | None:
        """Return the id of the snapshot an operation concerns, if any."""
        with self.lock:
            operation = self._operations.get(operation_id)
            return operation.snapshot_id if operation else None

    # -- time -------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        for operation in list(self._operations.values()):
            if operation.state != "pending" or now < operation.done_at:
                continue
            if operation.waits_for is not None and not operation.waits_for.done():
                continue
            faults = self._faults_for(operation.snapshot_id)
            if faults is not None:
                if operation.kind == "export" and faults.faults.export_stuck:
                    continue
                if operation.kind == "register" and faults.faults.register_stuck:
                    continue
            self._finish(operation)

    def _fail(self, operation: OperationRecord, reason: str, message: str) -> None:
        operation.state = "failure"
        operation.reason = reason
        operation.message = message

    def _finish(self, operation: OperationRecord) -> None:
        snapshot = self._snapshots.get(operation.snapshot_id or "")
        if operation.fail_reason is not None:
            self._fail(operation, operation.fail_reason, f"{operation.kind} failed")
            if snapshot is not None and snapshot.state == "exporting":
                snapshot.state = "ready"
            return
        if operation.kind == "register":
            self._finish_registration(operation)
            return
        operation.state = "success"
        if operation.kind == "export" and snapshot is not None:
            if snapshot.export is None:
                assert operation.waits_for is not None  # every export waits for its MD5
                snapshot.export = ExportRecord(str(uuid.uuid4()), operation.waits_for.result())
            snapshot.state = "exported"
        elif operation.kind == "delete" and snapshot is not None:
            self._remove_snapshot(snapshot)
        elif operation.kind == "delete-instance":
            instance = self._instances.pop(operation.resource_id, None)
            for snapshot_id in instance.snapshot_ids if instance else []:
                # Exoscale deletes an instance's snapshots with it.
                self._snapshots.pop(snapshot_id, None)
                self._faults.pop(snapshot_id, None)
        elif operation.kind == "create-snapshot" and snapshot is not None:
            snapshot.state = "ready"
        elif operation.payload is not None:
            if operation.waits_for is not None:
                operation.payload.checksum = operation.waits_for.result()
            self._templates[operation.payload.id] = operation.payload

    def _remove_snapshot(self, snapshot: SnapshotRecord) -> None:
        del self._snapshots[snapshot.id]
        self._faults.pop(snapshot.id, None)
        instance = self._instances.get(snapshot.instance_id)
        if instance is not None:
            instance.snapshot_ids.remove(snapshot.id)

    def _finish_registration(self, operation: OperationRecord) -> None:
        assert operation.waits_for is not None and operation.payload is not None
        fetched: FetchResult = operation.waits_for.result()
        template = operation.payload
        if fetched.error is not None or fetched.md5 is None:
            self._fail(operation, fetched.reason or "unavailable", fetched.error or "no data")
        elif fetched.md5 != template.checksum:
            self._fail(
                operation,
                "incorrect",
                f"checksum mismatch: expected {template.checksum}, got {fetched.md5} "
                f"({fetched.size} bytes read from {fetched.host})",
            )
        elif fetched.size == 0:
            self._fail(operation, "incorrect", f"the template from {fetched.host} is empty")
        else:
            operation.state = "success"
            template.size = fetched.size
            self._templates[template.id] = template

    def _start(
        self,
        zone: str,
        kind: str,
        resource: str,
        resource_id: str,
        snapshot_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        operation = OperationRecord(
            id=str(uuid.uuid4()),
            zone=zone,
            kind=kind,
            resource=resource,
            resource_id=resource_id,
            snapshot_id=snapshot_id,
            done_at=self.clock() + self.export_seconds,
            **extra,
        )
        self._operations[operation.id] = operation
        return operation.body()

    # -- API calls --------------------------------------------------------------------------

    def _snapshot(self, zone: str, snapshot_id: str) -> SnapshotRecord:
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or snapshot.zone != zone:
            raise ApiProblem(404, f"snapshot {snapshot_id} not found")
        return snapshot

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

    def delete_snapshot(self, zone: str, snapshot_id: str) -> dict[str, Any]:
        """delete-snapshot: returns the pending operation."""
        with self.lock:
            self._tick()
            snapshot = self._snapshot(zone, snapshot_id)
            if snapshot.state in ("exporting", "snapshotting", "deleting"):
                raise ApiProblem(409, f"snapshot {snapshot_id} is {snapshot.state}")
            snapshot.state = "deleting"
            return self._start(zone, "delete", "snapshot", snapshot_id, snapshot_id)

    def promote_snapshot(
        self, zone: str, snapshot_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """promote-snapshot-to-template: returns the pending operation."""
        name = _required(body, "name", max_length=255)
        description = _string(body, "description", max_length=4096)
        default_user = _string(body, "default-user", max_length=255)
        ssh_key_enabled = _boolean(body, "ssh-key-enabled")
        password_enabled = _boolean(body, "password-enabled")
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

    def get_operation(self, zone: str, operation_id: str) -> dict[str, Any]:
        """get-operation."""
        with self.lock:
            self._tick()
            operation = self._operations.get(operation_id)
            if operation is None or operation.zone != zone:
                raise ApiProblem(404, f"operation {operation_id} not found")
            return operation.body()

    def _instance_in(self, zone: str, instance_id: str) -> InstanceRecord:
        instance = self._instances.get(instance_id)
        if instance is None or instance.zone != zone:
            raise ApiProblem(404, f"instance {instance_id} not found")
        return instance

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

    def get_instance(self, zone: str, instance_id: str) -> dict[str, Any]:
        """get-instance."""
        with self.lock:
            self._tick()
            instance = self._instance_in(zone, instance_id)
            return instance.body(self._templates[instance.template_id])

    def list_instances(self, zone: str, query: Mapping[str, str]) -> dict[str, Any]:
        """list-instances, filtered by the ``labels`` and ``ip-address`` query parameters.

        Raises:
          ApiProblem: 400 for a ``labels`` value that is not ``key=value`` pairs.
        """
        wanted = parse_label_filter(query.get("labels", ""))
        ip_address = query.get("ip-address")
        managed = "manager-id" in query or "manager-type" in query
        with self.lock:
            self._tick()
            found = [
                instance.list_body(self._templates[instance.template_id])
                for instance in self._instances.values()
                if instance.zone == zone
                and not managed  # no instance pools: no instance has a manager
                and (ip_address is None or instance.public_ip == ip_address)
                and all(instance.labels.get(k) == v for k, v in wanted.items())
            ]
            return {"instances": found}

    def delete_instance(self, zone: str, instance_id: str) -> dict[str, Any]:
        """delete-instance: returns the pending operation; its snapshots go with it."""
        with self.lock:
            self._tick()
            instance = self._instance_in(zone, instance_id)
            return self._start(zone, "delete-instance", "instance", instance.id)

    # -- quotas -----------------------------------------------------------------------------

    def _quota(self, entity: str) -> dict[str, Any]:
        if entity == "snapshot":
            usage, limit = len(self._snapshots), self.snapshot_quota
        elif entity == "template":
            usage = sum(t.visibility == "private" for t in self._templates.values())
            limit = -1
        elif entity == "user_vm":
            usage, limit = len(self._instances), -1
        else:
            raise ApiProblem(404, f"quota {entity} not found")
        return {"resource": entity, "usage": usage, "limit": limit}

    def get_quota(self, entity: str) -> dict[str, Any]:
        """get-quota: the organisation's ``usage`` and ``limit`` (-1: unlimited) of ``entity``."""
        with self.lock:
            self._tick()
            return self._quota(entity)

    def list_quotas(self) -> dict[str, Any]:
        """list-quotas."""
        with self.lock:
            self._tick()
            return {"quotas": [self._quota(entity) for entity in QUOTA_ENTITIES]}

    def set_snapshot_quota(self, limit: int) -> None:
        """Set the snapshot limit (-1: unlimited). Raises ValueError for a bad limit."""
        limit = check_quota_limit(limit)
        with self.lock:
            self.snapshot_quota = limit

    # -- templates --------------------------------------------------------------------------

    def get_template(self, zone: str, template_id: str) -> dict[str, Any]:
        """get-template."""
        with self.lock:
            self._tick()
            template = self._templates.get(template_id)
            if template is None or template.zone != zone:
                raise ApiProblem(404, f"template {template_id} not found")
            return template.body()

    def list_templates(self, zone: str, query: Mapping[str, str]) -> dict[str, Any]:
        """list-templates of ``zone``: ``visibility`` (default ``public``) and ``family``.

        Raises:
          ApiProblem: 400 for a visibility other than ``public`` or ``private``.
        """
        visibility = query.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise ApiProblem(400, f"visibility must be public or private, got {visibility!r}")
        family = query.get("family")
        with self.lock:
            self._tick()
            self._public_template(zone)  # a zone always offers its public template
            return {
                "templates": [
                    template.body()
                    for template in self._templates.values()
                    if template.zone == zone
                    and template.visibility == visibility
                    and (family is None or template.family == family)
                ]
            }

    def register_template(self, zone: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """register-template: start reading ``url``; returns the pending operation.

        Raises:
          ApiProblem: 400 for a missing or malformed field; 503 when no fetcher runs.
        """
        name = _required(body, "name", max_length=255)
        url = _required(body, "url")
        checksum = _required(body, "checksum")
        ssh_key_enabled = _boolean(body, "ssh-key-enabled", required=True)
        password_enabled = _boolean(body, "password-enabled", required=True)
        boot_mode = _string(body, "boot-mode") or "legacy"
        if boot_mode not in ("legacy", "uefi"):
            raise ApiProblem(400, f"boot-mode must be legacy or uefi, got {boot_mode!r}")
        size = body.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ApiProblem(400, "size must be a positive integer")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiProblem(400, "url must be an HTTP or HTTPS URL")  # not quoted: a credential
        template = TemplateRecord(
            id=str(uuid.uuid4()),
            zone=zone,
            name=name,
            description=_string(body, "description", max_length=255) or "",
            created_at=self.clock(),
            size=size or 1,  # the bytes read, once read
            checksum=checksum.lower(),
            url=url,
            boot_mode=boot_mode,
            default_user=_string(body, "default-user", max_length=255),
            ssh_key_enabled=bool(ssh_key_enabled),
            password_enabled=bool(password_enabled),
            build=_string(body, "build", max_length=255),
            version=_string(body, "version", max_length=255),
            maintainer=_string(body, "maintainer", max_length=255),
        )
        with self.lock:
            self._tick()
            if self.fetcher is None:
                raise ApiProblem(503, "the template service is not running")
            faults = self._global_faults
            unreachable, mismatch = faults.take_registration_faults() if faults else (False, False)
            fetch = self.fetcher.start(url, unreachable=unreachable, mismatch=mismatch)
            self._fetches = [f for f in self._fetches if not f.done()] + [fetch]
            operation = self._start(
                zone, "register", "template", template.id, waits_for=fetch, payload=template
            )
            if faults is not None and faults.faults.register_seconds is not None:
                self._operations[operation["id"]].done_at = (
                    self.clock() + faults.faults.register_seconds
                )
            return operation

    def wait_for_fetches(self, timeout: float) -> bool:
        """Wait until every template URL being read has been read; return whether they were."""
        with self.lock:
            pending = [fetch for fetch in self._fetches if not fetch.done()]
        _, not_done = wait_futures(pending, timeout=timeout)
        with self.lock:
            self._fetches = [fetch for fetch in self._fetches if not fetch.done()]
        return not not_done

    # -- downloads --------------------------------------------------------------------------

    def download(
        self,
        zone: str,
        export_id: str,
        snapshot_id: str,
        path: str,
        params: Mapping[str, str],
    ) -> tuple[DiskImage, str]:
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


def _required(body: Mapping[str, Any], name: str, max_length: int | None = None) -> str:
    value = _string(body, name, max_length)
    if value is None:
        raise ApiProblem(400, f"missing required field: {name}")
    return value


def _string(body: Mapping[str, Any], name: str, max_length: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiProblem(400, f"{name} must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise ApiProblem(400, f"{name} must be at most {max_length} characters")
    return value


def _boolean(body: Mapping[str, Any], name: str, required: bool = False) -> bool | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiProblem(400, f"missing required field: {name}")
        return None
    if not isinstance(value, bool):
        raise ApiProblem(400, f"{name} must be true or false")
    return value
