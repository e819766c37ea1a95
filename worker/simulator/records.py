"""The simulator's resources, as plain records, and their JSON bodies in the API's shapes.

Every body here validates against the matching schema of the official OpenAPI spec
(``exoscale/openapi.json``); the conformance tests hold them to it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from worker.simulator.disk import Image


def timestamp(unix: float) -> str:
    """Return ``unix`` as the API writes dates (``2026-01-31T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


@dataclass
class TemplateRecord:
    """A compute template (public, or registered from a snapshot or a URL).

    Parameters:
      id, zone, name: Identity; ``size`` is in bytes, ``checksum`` the MD5 hex of the image.
      url: Where the image came from (a promoted snapshot's is empty and left out).
    """

    id: str
    zone: str
    name: str
    created_at: float
    size: int
    checksum: str
    url: str = ""
    description: str = ""
    family: str = "other"
    boot_mode: str = "legacy"
    default_user: str | None = None
    ssh_key_enabled: bool = True
    password_enabled: bool = False
    build: str | None = None
    version: str | None = None
    maintainer: str | None = None
    visibility: str = "private"

    def body(self) -> dict[str, Any]:
        """Return the template object."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "size": self.size,
            "checksum": self.checksum,
            "boot-mode": self.boot_mode,
            "ssh-key-enabled": self.ssh_key_enabled,
            "password-enabled": self.password_enabled,
            "created-at": timestamp(self.created_at),
            "visibility": self.visibility,
            "zones": [self.zone],
            "application-consistent-snapshot-enabled": False,
        }
        optional = {
            "url": self.url or None,
            "default-user": self.default_user,
            "build": self.build,
            "version": self.version,
            "maintainer": self.maintainer,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return body


#: Members of the instance object that list-instances also shows (the spec's list item).
LISTED_INSTANCE_MEMBERS = (
    "id",
    "name",
    "state",
    "created-at",
    "instance-type",
    "template",
    "public-ip",
    "public-ip-assignment",
    "mac-address",
    "labels",
    "security-groups",
    "private-networks",
    "ssh-keys",
)


@dataclass
class InstanceRecord:
    """A compute instance that snapshots are taken of.

    Parameters:
      disk_size: The instance's disk in GiB (10..51200).
      public_ip, mac_address: Derived from the id, for plausible bodies.
      labels: The instance's labels (``labels`` in the API).
    """

    id: str
    zone: str
    name: str
    created_at: float
    template_id: str
    disk_size: int
    public_ip: str
    mac_address: str
    instance_type_id: str
    labels: dict[str, str] = field(default_factory=dict)
    snapshot_ids: list[str] = field(default_factory=list)

    def body(self, template: TemplateRecord) -> dict[str, Any]:
        """Return the full instance object, embedding ``template``."""
        return {
            "id": self.id,
            "name": self.name,
            "state": "running",
            "created-at": timestamp(self.created_at),
            "disk-size": self.disk_size,
            "instance-type": {
                "id": self.instance_type_id,
                "family": "standard",
                "size": "medium",
                "cpus": 2,
                "memory": 4 << 30,
                "authorized": True,
                "zones": [self.zone],
            },
            "template": template.body(),
            "public-ip": self.public_ip,
            "public-ip-assignment": "inet4",
            "mac-address": self.mac_address,
            "labels": dict(self.labels),
            "security-groups": [],
            "anti-affinity-groups": [],
            "elastic-ips": [],
            "private-networks": [],
            "ssh-keys": [],
            "snapshots": [{"id": snapshot_id} for snapshot_id in self.snapshot_ids],
            "secureboot-enabled": False,
            "tpm-enabled": False,
            "application-consistent-snapshot-enabled": False,
        }

    def list_body(self, template: TemplateRecord) -> dict[str, Any]:
        """Return the instance as list-instances shows it (fewer members than get-instance)."""
        body = self.body(template)
        return {name: body[name] for name in LISTED_INSTANCE_MEMBERS}


@dataclass
class ExportRecord:
    """The disk file of an exported snapshot.

    Parameters:
      id: The random path segment of its URL (a new export id per export).
      md5: MD5 hex of the served bytes.
    """

    id: str
    md5: str


@dataclass
class SnapshotRecord:
    """A snapshot and the disk image it exports.

    Parameters:
      size: The snapshot's size in GiB as the API reports it.
      served: Body bytes of presigned downloads sent so far.
      sending: Download responses whose body is being sent right now.
    """

    id: str
    zone: str
    name: str
    created_at: float
    state: str
    size: int
    image: Image
    instance_id: str
    export: ExportRecord | None = None
    served: int = 0
    sending: int = 0

    def body(self, instance: InstanceRecord, export: dict[str, str] | None) -> dict[str, Any]:
        """Return the snapshot object; ``export`` is its ``export`` member, if exported."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "created-at": timestamp(self.created_at),
            "state": self.state,
            "size": self.size,
            "instance": {"id": instance.id, "name": instance.name},
            "application-consistent": False,
        }
        if export is not None:
            body["export"] = export
        return body


@dataclass
class OperationRecord:
    """An asynchronous operation.

    Parameters:
      kind: ``export``, ``delete``, ``create-snapshot``, ``delete-instance``, ``promote`` or
        ``register``.
      resource, resource_id: What ``reference`` points at (``snapshot``, ``instance`` or
        ``template``).
      snapshot_id: The snapshot the call concerned, whose faults apply (None: none).
      done_at: UNIX time from which the operation may finish.
      fail_reason: Set when a fault decided at the start that it will fail.
      waits_for: A computation that must finish first: the export's MD5 (export, promote),
        or the reading of the template URL (register, a
        :class:`~worker.simulator.fetch.FetchResult`).
      payload: What the operation creates when it succeeds (a template, for promote/register).
    """

    id: str
    zone: str
    kind: str
    resource: str
    resource_id: str
    snapshot_id: str | None
    done_at: float
    state: str = "pending"
    reason: str | None = None
    message: str | None = None
    fail_reason: str | None = None
    waits_for: Future[Any] | None = None
    payload: TemplateRecord | None = None

    def body(self) -> dict[str, Any]:
        """Return the operation object."""
        body: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "reference": {
                "id": self.resource_id,
                "link": f"/v2/{self.resource}/{self.resource_id}",
                "command": f"get-{self.resource}",
            },
        }
        if self.reason is not None:
            body["reason"] = self.reason
        if self.message is not None:
            body["message"] = self.message
        return body
