"""Typed records of the Exoscale API v2 objects snaparchive uses.

Each ``from_api`` checks the fields we rely on and raises
:class:`~worker.errors.BadResponse` when the server sent something else, so a
malformed answer becomes a clear error and not a ``KeyError`` deep inside a job.
Presigned URLs are credentials: they are kept out of ``repr`` and out of ``raw``;
so is a template's source ``url``, which is the presigned URL it was registered from.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from worker.errors import BadResponse

SNAPSHOT_STATES = ("snapshotting", "ready", "exporting", "exported", "deleting", "deleted", "error")
OPERATION_STATES = ("pending", "success", "failure", "timeout")
BOOT_MODES = ("legacy", "uefi")
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


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


def _typed(data: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """Return member ``name`` (None when absent or null); BadResponse when of another type."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadResponse(f"exoscale: {what} has an invalid {name!r}")
    return value


def _labels(data: dict[str, Any], what: str) -> dict[str, str]:
    labels = data.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise BadResponse(f"exoscale: {what} has labels that are not a map of strings")
    return dict(labels)


def _without_template_url(data: dict[str, Any]) -> dict[str, Any]:
    # A registered template's url is the (presigned) URL it was read from: a credential.
    raw = copy.deepcopy(data)
    raw.pop("url", None)
    if isinstance(raw.get("template"), dict):
        raw["template"].pop("url", None)
    return raw


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
    """A compute instance, with its labels and the id of the template it was built from.

    ``raw`` is the API's record without its template's source ``url``.
    """

    id: str
    name: str
    state: str | None
    template_id: str | None
    labels: dict[str, str]
    created_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Instance:
        instance_id = _require(data, "id", str, "instance")
        what = f"instance {instance_id}"
        template = _typed(data, "template", dict, what)
        return cls(
            id=instance_id,
            name=_typed(data, "name", str, what) or "",
            state=_typed(data, "state", str, what),
            template_id=_typed(template, "id", str, f"{what} template") if template else None,
            labels=_labels(data, what),
            created_at=_typed(data, "created-at", str, what),
            raw=_without_template_url(data),
        )

    def has_labels(self, wanted: dict[str, str]) -> bool:
        """Whether the instance carries every label of ``wanted`` with the same value."""
        return all(self.labels.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class Template:
    """A compute template: what a restore registers and what an archive remembers.

    ``size`` is in bytes, ``checksum`` the image's MD5 hex (lower case). ``raw`` is the API's
    record without the source ``url`` (the presigned URL a registered template was read from).
    """

    id: str
    name: str
    boot_mode: str | None
    default_user: str | None
    ssh_key_enabled: bool | None
    password_enabled: bool | None
    checksum: str | None
    size: int | None
    zones: tuple[str, ...]
    visibility: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Any) -> Template:
        template_id = _require(data, "id", str, "template")
        what = f"template {template_id}"
        checksum = _typed(data, "checksum", str, what)
        zones = _typed(data, "zones", list, what) or []
        if not all(isinstance(zone, str) for zone in zones):
            raise BadResponse(f"exoscale: {what} has an invalid 'zones'")
        return cls(
            id=template_id,
            name=_typed(data, "name", str, what) or "",
            boot_mode=_typed(data, "boot-mode", str, what),
            default_user=_typed(data, "default-user", str, what),
            ssh_key_enabled=_typed(data, "ssh-key-enabled", bool, what),
            password_enabled=_typed(data, "password-enabled", bool, what),
            checksum=checksum.lower() if checksum else None,
            size=_typed(data, "size", int, what),
            zones=tuple(zones),
            visibility=_typed(data, "visibility", str, what),
            raw=_without_template_url(data),
        )


@dataclass(frozen=True)
class TemplateSpec:
    """What register-template needs: a name, a public URL of a QCOW2 image and its MD5.

    Parameters:
      name: 1..255 characters.
      url: An HTTP(S) URL Exoscale can read (a presigned GET URL: a credential, kept out of
        ``repr`` and of every error message).
      checksum: The image's MD5 hex (32 hex digits).
      ssh_key_enabled, password_enabled: Login flags (required by the API; default: SSH keys
        only, as Exoscale's own templates).
      boot_mode: ``legacy`` or ``uefi`` (default: left out, which the API takes as legacy).
      default_user: 1..255 characters, or left out.
      description: At most 255 characters, or left out.
      size: The image size in bytes, or left out.

    Raises:
      ValueError: On a value the API would refuse (the message never quotes the URL).
    """

    name: str
    url: str = field(repr=False)
    checksum: str
    ssh_key_enabled: bool = True
    password_enabled: bool = False
    boot_mode: str | None = None
    default_user: str | None = None
    description: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 255:
            raise ValueError("template name must be 1..255 characters")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("template url must be an HTTP or HTTPS URL")
        if not _MD5_HEX.match(self.checksum.lower()):
            raise ValueError(f"template checksum must be an MD5 hex digest, got {self.checksum!r}")
        if self.boot_mode is not None and self.boot_mode not in BOOT_MODES:
            raise ValueError(f"boot mode must be legacy or uefi, got {self.boot_mode!r}")
        if self.default_user is not None and not 1 <= len(self.default_user) <= 255:
            raise ValueError("default user must be 1..255 characters")
        if self.description is not None and len(self.description) > 255:
            raise ValueError("template description must be at most 255 characters")
        if self.size is not None and self.size < 1:
            raise ValueError("template size must be a positive number of bytes")

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "checksum": self.checksum.lower(),
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
class Quota:
    """An organisation quota: ``usage`` of ``resource`` against ``limit`` (-1: unlimited)."""

    resource: str
    usage: int
    limit: int

    @property
    def unlimited(self) -> bool:
        return self.limit < 0

    @property
    def available(self) -> int | None:
        """How many more may be made (None: no limit)."""
        return None if self.unlimited else max(0, self.limit - self.usage)

    @property
    def exhausted(self) -> bool:
        """Whether the limit is reached: making one more is refused."""
        return not self.unlimited and self.usage >= self.limit

    @classmethod
    def from_api(cls, data: Any, entity: str) -> Quota:
        what = f"quota {entity}"
        usage, limit = _require(data, "usage", int, what), _require(data, "limit", int, what)
        if isinstance(usage, bool) or isinstance(limit, bool) or usage < 0 or limit < -1:
            raise BadResponse(f"exoscale: {what} has an invalid usage or limit")
        return cls(resource=_typed(data, "resource", str, what) or entity, usage=usage, limit=limit)


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
