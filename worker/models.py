"""Typed records of the Exoscale API v2 objects snaparchive uses.

Each ``from_api`` checks the fields we rely on with :class:`~worker.fields.Fields` and
raises :class:`~worker.errors.BadResponse` when the server sent something else, so a
malformed answer becomes a clear error and not a ``KeyError`` deep inside a job. Fields
a job can do without (a snapshot's name, an operation's message) are read leniently: a
wrong type there leaves them out instead of failing the call.
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
from worker.fields import Fields

#: The service named in every error.
SERVICE = "exoscale"

SNAPSHOT_STATES = ("snapshotting", "ready", "exporting", "exported", "deleting", "deleted", "error")
OPERATION_STATES = ("pending", "success", "failure", "timeout")
BOOT_MODES = ("legacy", "uefi")
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


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
        snapshot_id = Fields(SERVICE, data, "snapshot").required("id", str)
        fields = Fields(SERVICE, data, f"snapshot {snapshot_id}")
        state = fields.required("state", str)
        raw = copy.deepcopy(data)
        export = None
        exported = fields.lenient("export", dict)
        if exported is not None:
            url, md5 = exported.get("presigned-url"), exported.get("md5sum")
            if isinstance(url, str) and url and isinstance(md5, str) and md5:
                export = SnapshotExport(presigned_url=url, md5sum=md5.lower())
            raw["export"].pop("presigned-url", None)
        instance = fields.lenient("instance", dict)
        return cls(
            id=snapshot_id,
            name=fields.lenient("name", str) or "",
            state=state,
            size_gib=fields.lenient("size", int) or 0,
            created_at=fields.lenient("created-at", str),
            instance_id=Fields(SERVICE, instance, "instance").lenient("id", str)
            if instance is not None
            else None,
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
        operation_id = Fields(SERVICE, data, "operation").required("id", str)
        fields = Fields(SERVICE, data, f"operation {operation_id}")
        state = fields.required("state", str)
        if state not in OPERATION_STATES:
            raise BadResponse(f"{SERVICE}: operation {operation_id} has unknown state {state!r}")
        reference = Fields(SERVICE, fields.lenient("reference", dict) or {}, "reference")
        return cls(
            id=operation_id,
            state=state,
            reason=fields.lenient("reason", str),
            message=fields.lenient("message", str),
            reference_id=reference.lenient("id", str),
            reference_command=reference.lenient("command", str),
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
        instance_id = Fields(SERVICE, data, "instance").required("id", str)
        fields = Fields(SERVICE, data, f"instance {instance_id}")
        template = fields.child("template")
        return cls(
            id=instance_id,
            name=fields.optional("name", str) or "",
            state=fields.optional("state", str),
            template_id=template.optional("id", str) if template else None,
            labels=fields.labels(),
            created_at=fields.optional("created-at", str),
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
        template_id = Fields(SERVICE, data, "template").required("id", str)
        fields = Fields(SERVICE, data, f"template {template_id}")
        checksum = fields.optional("checksum", str)
        return cls(
            id=template_id,
            name=fields.optional("name", str) or "",
            boot_mode=fields.optional("boot-mode", str),
            default_user=fields.optional("default-user", str),
            ssh_key_enabled=fields.optional("ssh-key-enabled", bool),
            password_enabled=fields.optional("password-enabled", bool),
            checksum=checksum.lower() if checksum else None,
            size=fields.optional("size", int),
            zones=fields.strings("zones"),
            visibility=fields.optional("visibility", str),
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
        fields = Fields(SERVICE, data, f"quota {entity}")
        usage, limit = fields.required("usage", int), fields.required("limit", int)
        if usage < 0 or limit < -1:
            raise BadResponse(f"{SERVICE}: quota {entity} has an invalid usage or limit")
        return cls(resource=fields.optional("resource", str) or entity, usage=usage, limit=limit)


@dataclass(frozen=True)
class Zone:
    """A zone and its API and SOS endpoints."""

    name: str
    api_endpoint: str | None
    sos_endpoint: str | None

    @classmethod
    def from_api(cls, data: Any) -> Zone:
        fields = Fields(SERVICE, data, "zone")
        return cls(
            name=fields.required("name", str),
            api_endpoint=fields.lenient("api-endpoint", str),
            sos_endpoint=fields.lenient("sos-endpoint", str),
        )
