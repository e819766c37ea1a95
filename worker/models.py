"""Typed records of the Exoscale API v2 objects snaparchive uses.

Each ``from_api`` checks the fields we rely on and raises
:class:`~worker.errors.BadResponse` when the server sent something else, so a
malformed answer becomes a clear error and not a ``KeyError`` deep inside a job.
Presigned URLs are credentials: they are kept out of ``repr`` and out of ``raw``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from worker.errors import BadResponse

SNAPSHOT_STATES = ("snapshotting", "ready", "exporting", "exported", "deleting", "deleted", "error")
OPERATION_STATES = ("pending", "success", "failure", "timeout")


def _require(data: Any, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(data, dict):
        raise BadResponse(f"exoscale: expected a {what} object, got {type(data).__name__}")
    value = data.get(name)
    if not isinstance(value, kind):
        raise BadResponse(f"exoscale: {what} has no valid {name!r}")
    return value


def _optional(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    return value if isinstance(value, kind) else None


@dataclass(frozen=True)
class SnapshotExport:
    """Where an exported snapshot's disk file can be read, and its MD5 (hex)."""

    presigned_url: str = field(repr=False)
    md5sum: str


@dataclass(frozen=True)
class Snapshot:
    """An instance snapshot.

    ``size_gib`` is the volume size in GiB (an upper bound of the exported file's size).
    ``raw`` is the API's record without the presigned URL.
    """

    id: str
    name: str
    state: str
    size_gib: int
    created_at: str | None
    instance_id: str | None
    export: SnapshotExport | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Snapshot:
        snapshot_id = _require(data, "id", str, "snapshot")
        state = _require(data, "state", str, "snapshot")
        raw = copy.deepcopy(data)
        export = None
        exported = data.get("export")
        if isinstance(exported, dict):
            url, md5 = exported.get("presigned-url"), exported.get("md5sum")
            if isinstance(url, str) and url and isinstance(md5, str) and md5:
                export = SnapshotExport(presigned_url=url, md5sum=md5.lower())
            raw["export"].pop("presigned-url", None)
        instance = data.get("instance")
        return cls(
            id=snapshot_id,
            name=_optional(data, "name", str) or "",
            state=state,
            size_gib=_optional(data, "size", int) or 0,
            created_at=_optional(data, "created-at", str),
            instance_id=_optional(instance, "id", str) if isinstance(instance, dict) else None,
            export=export,
            raw=raw,
        )


@dataclass(frozen=True)
class Operation:
    """An asynchronous operation: ``pending``, then ``success``, ``failure`` or ``timeout``."""

    id: str
    state: str
    reason: str | None
    message: str | None
    reference_id: str | None
    reference_command: str | None

    @property
    def done(self) -> bool:
        return self.state != "pending"

    @classmethod
    def from_api(cls, data: Any) -> Operation:
        operation_id = _require(data, "id", str, "operation")
        state = _require(data, "state", str, "operation")
        if state not in OPERATION_STATES:
            raise BadResponse(f"exoscale: operation {operation_id} has unknown state {state!r}")
        reference = data.get("reference") if isinstance(data.get("reference"), dict) else {}
        return cls(
            id=operation_id,
            state=state,
            reason=_optional(data, "reason", str),
            message=_optional(data, "message", str),
            reference_id=_optional(reference, "id", str),
            reference_command=_optional(reference, "command", str),
        )


@dataclass(frozen=True)
class Instance:
    """A compute instance, with the id of the template it was built from."""

    id: str
    name: str
    state: str | None
    template_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Instance:
        template = data.get("template") if isinstance(data, dict) else None
        return cls(
            id=_require(data, "id", str, "instance"),
            name=_optional(data, "name", str) or "",
            state=_optional(data, "state", str),
            template_id=_optional(template, "id", str) if isinstance(template, dict) else None,
            raw=data,
        )


@dataclass(frozen=True)
class Template:
    """A compute template: what a restore registers and what an archive remembers."""

    id: str
    name: str
    boot_mode: str | None
    default_user: str | None
    ssh_key_enabled: bool | None
    password_enabled: bool | None
    checksum: str | None
    size: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Template:
        return cls(
            id=_require(data, "id", str, "template"),
            name=_optional(data, "name", str) or "",
            boot_mode=_optional(data, "boot-mode", str),
            default_user=_optional(data, "default-user", str),
            ssh_key_enabled=_optional(data, "ssh-key-enabled", bool),
            password_enabled=_optional(data, "password-enabled", bool),
            checksum=_optional(data, "checksum", str),
            size=_optional(data, "size", int),
            raw=data,
        )


@dataclass(frozen=True)
class TemplateSpec:
    """What register-template needs: a name, a public URL of a QCOW2 image and its MD5."""

    name: str
    url: str = field(repr=False)
    checksum: str
    ssh_key_enabled: bool = True
    password_enabled: bool = False
    boot_mode: str | None = None
    default_user: str | None = None
    description: str | None = None
    size: int | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "checksum": self.checksum,
            "ssh-key-enabled": self.ssh_key_enabled,
            "password-enabled": self.password_enabled,
        }
        optional = {
            "boot-mode": self.boot_mode,
            "default-user": self.default_user,
            "description": self.description,
            "size": self.size,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


@dataclass(frozen=True)
class Zone:
    """A zone and its API and SOS endpoints."""

    name: str
    api_endpoint: str | None
    sos_endpoint: str | None

    @classmethod
    def from_api(cls, data: Any) -> Zone:
        return cls(
            name=_require(data, "name", str, "zone"),
            api_endpoint=_optional(data, "api-endpoint", str),
            sos_endpoint=_optional(data, "sos-endpoint", str),
        )
