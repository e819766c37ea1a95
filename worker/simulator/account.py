"""The simulated account's records and what every API call shares.

:class:`Account` holds the snapshots, instances, templates and operations of every zone and the
faults in force, all behind one lock, so the server's event loop thread and a test's thread may
call in at the same time. Time comes from an injectable clock. The calls are mixins over it,
one module per resource (:mod:`.operations`, :mod:`.exports`, :mod:`.snapshots`,
:mod:`.instances`, :mod:`.templates`), put together in :class:`.state.SimState`.
Also here: :class:`ApiProblem` (a refused request), the checks of what a test or the
``simulate`` command adds, and the readers of JSON request bodies.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from worker.argtypes import check_uuid
from worker.simulator.disk import BlockPool
from worker.simulator.faults import ActiveFaults, Faults
from worker.simulator.fetch import FetchResult, TemplateFetcher
from worker.simulator.presign import Presigner
from worker.simulator.qcow2image import ImageOptions
from worker.simulator.records import (
    InstanceRecord,
    OperationRecord,
    SnapshotRecord,
    TemplateRecord,
)
from worker.units import GiB

#: Snapshot size bounds of the API, in GiB.
MIN_SIZE_GIB, MAX_SIZE_GIB = 10, 51200
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


def required_field(body: Mapping[str, Any], name: str, max_length: int | None = None) -> str:
    """Return the non-empty string ``name`` of a request body; ApiProblem 400 when missing."""
    value = string_field(body, name, max_length)
    if value is None:
        raise ApiProblem(400, f"missing required field: {name}")
    return value


def string_field(body: Mapping[str, Any], name: str, max_length: int | None = None) -> str | None:
    """Return the string ``name`` of a request body (None when absent), at most ``max_length``
    characters; ApiProblem 400 when it is empty or no string."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiProblem(400, f"{name} must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise ApiProblem(400, f"{name} must be at most {max_length} characters")
    return value


def boolean_field(body: Mapping[str, Any], name: str, required: bool = False) -> bool | None:
    """Return the boolean ``name`` of a request body (None when absent and not ``required``)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiProblem(400, f"missing required field: {name}")
        return None
    if not isinstance(value, bool):
        raise ApiProblem(400, f"{name} must be true or false")
    return value


class Account:
    """Everything the simulated API knows, and the lookups every call makes.

    Parameters:
      seed: Seeds disk contents and derived ids.
      export_seconds: How long operations stay pending at least.
      url_ttl: Default lifetime of presigned URLs, in seconds.
      clock: Returns the current UNIX time (default: ``time.time``).
      snapshot_quota: The organisation's snapshot limit (-1: unlimited).
      images: How exported images are made (default :class:`.qcow2image.ImageOptions()`).
    """

    def __init__(
        self,
        seed: int,
        export_seconds: float,
        url_ttl: float,
        clock: Callable[[], float],
        snapshot_quota: int = -1,
        images: ImageOptions | None = None,
    ) -> None:
        self.seed = seed
        self.export_seconds = export_seconds
        self.url_ttl = url_ttl
        self.clock = clock
        self.snapshot_quota = check_quota_limit(snapshot_quota)
        self.lock = threading.RLock()
        self.pool = BlockPool(seed)
        self.images = images or ImageOptions()
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

    # -- records ----------------------------------------------------------------------------

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

    def _snapshot(self, zone: str, snapshot_id: str) -> SnapshotRecord:
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or snapshot.zone != zone:
            raise ApiProblem(404, f"snapshot {snapshot_id} not found")
        return snapshot

    def _instance_in(self, zone: str, instance_id: str) -> InstanceRecord:
        instance = self._instances.get(instance_id)
        if instance is None or instance.zone != zone:
            raise ApiProblem(404, f"instance {instance_id} not found")
        return instance

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
