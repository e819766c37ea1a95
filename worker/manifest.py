"""The archive format: what a verified archive is in the bucket, and how to read one.

This module is the format's reference; ``worker/manifest.schema.json`` (shipped with the
package) says the same as a JSON Schema, so an archive can be read without snaparchive.

Key layout under the store's prefix (``SNAPARCHIVE_S3_PREFIX``, default ``snaparchive/``)::

    {prefix}{provider}/{zone}/{snapshot_id}/manifest.json     written last: the commit point
    {prefix}{provider}/{zone}/{snapshot_id}/image             the image, when it is one object
    {prefix}{provider}/{zone}/{snapshot_id}/image.seg00000    ... or its segments, in order
    {prefix}{provider}/{zone}/{snapshot_id}/image.seg00001

Only the manifest makes an archive: image objects without one are leftovers of a commit that
did not finish and are never read as an archive. The image is the concatenation of the
objects the manifest lists, in order; its MD5 is the manifest's ``md5``, which is the
export's published ``md5sum``. Each object is a multipart upload of ``part_size`` parts (the
last one shorter); its ``etag`` is the S3 multipart ETag (``md5(concat(part md5s))-N``).

``manifest.json`` (format 2; format 1 lacks ``policy`` and ``template``, and is still read)::

    {
      "format": 2,
      "provider": "exoscale", "zone": "ch-gva-2", "snapshot_id": "<uuid>",
      "snapshot_name": "db-nightly", "instance_id": "<uuid>" | null,
      "created_at": "<ISO 8601, when the snapshot was taken>" | null,
      "size": <image bytes>, "md5": "<32 lowercase hex>", "part_size": <bytes>,
      "segments": [{"key": "<full key>", "size": <bytes>, "etag": "<ETag>", "offset": <bytes>}],
      "tool_version": "<snaparchive version>", "archived_at": "<ISO 8601 UTC>",
      "policy": "<backup policy name>" | null,
      "template": {"boot_mode": "legacy" | "uefi", "ssh_key_enabled": true,
                   "password_enabled": false, "default_user": "ubuntu" | null} | null
    }

``template`` is how the snapshot's instance booted (its template's settings when it was
archived): a restore registers a template with the same settings, since the instance and
its template may be gone by then. ``null`` where it was not known.

A reader trusts a manifest only when it is exactly what a commit writes
(:meth:`Manifest.from_json` lists the rules): the ids of its own key, segments under its own
folder named by the layout above, sizes adding up. The store reads at most
:data:`MANIFEST_LIMIT` bytes of one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from worker.errors import StoreIntegrityError

MANIFEST_NAME = "manifest.json"
#: The format written. Format 1 (no ``policy``, no ``template``) is still read.
MANIFEST_FORMAT = 2
BOOT_MODES = ("legacy", "uefi")
#: The most bytes of a manifest read: a real one is a few hundred bytes per segment.
MANIFEST_LIMIT = 1 << 20
MD5_HEX = re.compile(r"[0-9a-f]{32}")
IMAGE_NAME = re.compile(r"image(\.seg\d{5})?")


def schema() -> dict[str, Any]:
    """Return the manifest's JSON Schema (``worker/manifest.schema.json``)."""
    text = resources.files("worker").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class ArchiveId:
    """Which archive: the source snapshot's ``provider``, ``zone`` and ``snapshot_id``."""

    provider: str
    zone: str
    snapshot_id: str

    def __str__(self) -> str:
        return f"{self.zone}/{self.snapshot_id}"


def archive_prefix(prefix: str, archive: ArchiveId) -> str:
    """Return ``{prefix}{provider}/{zone}/{snapshot_id}/``.

    Raises:
      ValueError: When a component is empty or contains ``/``.
    """
    parts = (
        _component("provider", archive.provider),
        _component("zone", archive.zone),
        _component("snapshot id", archive.snapshot_id),
    )
    return f"{prefix}{'/'.join(parts)}/"


def image_name(segment: int, segments: int, folder: str = "") -> str:
    """Return the key of image object ``segment`` (from 0) of ``segments`` in ``folder``:
    ``image`` when there is one, else ``image.seg00000``, ``image.seg00001``, ..."""
    return f"{folder}image" if segments == 1 else f"{folder}image.seg{segment:05d}"


def manifest_archive(prefix: str, key: str) -> ArchiveId | None:
    """Return the archive whose manifest is at ``key`` under ``prefix``, or ``None`` when
    ``key`` is not a manifest key."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if len(parts) != 4 or parts[3] != MANIFEST_NAME:
        return None
    if any(not part or part in (".", "..") for part in parts[:3]):
        return None
    return ArchiveId(parts[0], parts[1], parts[2])


def _component(name: str, value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{name} must be a non-empty name without '/', got {value!r}")
    return value


@dataclass(frozen=True)
class ArchivedObject:
    """One stored object of an archive: its ``key``, ``size`` in bytes, multipart ``etag``
    (without quotes) and ``offset`` of its first byte in the image."""

    key: str
    size: int
    etag: str
    offset: int = 0


@dataclass(frozen=True)
class SourceTemplate:
    """How the snapshot's instance booted, as its template said when it was archived: what a
    restore as a template needs once the instance (and its template) may be gone.

    Parameters:
      boot_mode: ``legacy`` or ``uefi``.
      ssh_key_enabled, password_enabled: The template's flags.
      default_user: The template's default user, if it had one.
    """

    boot_mode: str
    ssh_key_enabled: bool
    password_enabled: bool
    default_user: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> SourceTemplate:
        """Read the ``template`` object of a manifest (raises :class:`_Invalid`)."""
        if not isinstance(data, dict):
            raise _Invalid(f"template is a {type(data).__name__}, not an object")
        kinds: dict[str, type | tuple[type, ...]] = {
            "boot_mode": str,
            "ssh_key_enabled": bool,
            "password_enabled": bool,
            "default_user": (str, type(None)),
        }
        if data.keys() != kinds.keys():
            raise _Invalid(f"template has fields {sorted(data)}, not {sorted(kinds)}")
        for name, kind in kinds.items():
            _check_type(f"template {name}", data[name], kind)
        if data["boot_mode"] not in BOOT_MODES:
            raise _Invalid(f"template boot_mode {shown(data['boot_mode'])} is not legacy or uefi")
        return cls(**data)


@dataclass(frozen=True)
class Manifest:
    """The JSON document that commits an archive; see the module docstring for the format.

    Parameters:
      provider, zone, snapshot_id, snapshot_name, instance_id, created_at: The source snapshot.
      size: Image size in bytes.
      md5: The image's MD5, equal to the export's published md5sum.
      part_size: Multipart part size used for the objects.
      objects: The image objects in order; concatenated they are the image.
      tool_version: ``worker.__version__`` of the writer.
      archived_at: ISO 8601 UTC time of the commit.
      policy: The backup policy that took the snapshot, if one did (format 2).
      template: The source instance's template settings, when known (format 2).
    """

    provider: str
    zone: str
    snapshot_id: str
    snapshot_name: str
    instance_id: str | None
    created_at: str | None
    size: int
    md5: str
    part_size: int
    objects: tuple[ArchivedObject, ...]
    tool_version: str
    archived_at: str
    policy: str | None = None
    template: SourceTemplate | None = None
    format: int = field(default=MANIFEST_FORMAT)

    def to_json(self) -> bytes:
        """Return the manifest as UTF-8 JSON (objects listed as ``segments``)."""
        data = asdict(self)
        data["segments"] = data.pop("objects")
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, key: str) -> Manifest:
        """Parse and check :meth:`to_json` output read from ``key``.

        Parameters:
          raw: The stored bytes.
          key: Where they were read: ``.../{provider}/{zone}/{snapshot_id}/manifest.json``.

        A manifest is trusted only when it is exactly what a commit writes: a known
        ``format``; every field present, of its type, and no other; the ``provider``,
        ``zone`` and ``snapshot_id`` of its own key; an MD5 of 32 lowercase hex digits;
        at least one object, each under the manifest's own folder and named as
        :func:`image_name` names it, in order, with a positive size, a
        non-empty ETag and the offset where the one before it ended; the sizes adding
        up to ``size``. Restore reads the keys a manifest lists, so one that names
        another snapshot's (or another tenant's) objects is refused, not followed.

        Raises:
          StoreIntegrityError: Naming ``key`` and the first problem found.
        """
        try:
            return cls._parse(raw, key)
        except _Invalid as exc:
            raise StoreIntegrityError(f"malformed manifest {key}: {exc}") from None

    @classmethod
    def _parse(cls, raw: bytes, key: str) -> Manifest:
        folder, _, name = key.rpartition("/")
        path = folder.split("/")
        if name != MANIFEST_NAME or len(path) < 3:
            raise _Invalid(f"the key does not end in PROVIDER/ZONE/SNAPSHOT/{MANIFEST_NAME}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Invalid("not JSON") from None
        if not isinstance(data, dict):
            raise _Invalid("not a JSON object")
        version = data.get("format")
        if type(version) is not int or version not in _FIELDS_OF_FORMAT:
            raise _Invalid(f"unknown format {shown(version)}")
        fields_of = _FIELDS_OF_FORMAT[version]
        missing = sorted(fields_of.keys() - data.keys())
        if missing:
            raise _Invalid(f"no {missing[0]!r}")
        unknown = sorted(data.keys() - fields_of.keys())
        if unknown:
            raise _Invalid(f"unknown field {shown(unknown[0])}")
        for field_name, kind in fields_of.items():
            _check_type(field_name, data[field_name], kind)
        for field_name, expected in zip(_KEY_FIELDS, path[-3:], strict=True):
            if data[field_name] != expected:
                raise _Invalid(
                    f"{field_name} {shown(data[field_name])} is not its key's {expected!r}"
                )
        if not MD5_HEX.fullmatch(data["md5"]):
            raise _Invalid(f"md5 {shown(data['md5'])} is not 32 lowercase hex digits")
        for field_name in ("size", "part_size"):
            if data[field_name] <= 0:
                raise _Invalid(f"{field_name} {shown(data[field_name])} is not positive")
        segments = data.pop("segments")
        if not segments:
            raise _Invalid("no segments")
        objects: list[ArchivedObject] = []
        stored = 0
        for n, item in enumerate(segments):
            expected_key = image_name(n, len(segments), f"{folder}/")
            objects.append(_segment(item, n, expected_key, stored))
            stored += objects[-1].size
        if stored != data["size"]:
            raise _Invalid(f"segments add up to {stored} bytes, size is {data['size']}")
        template = data.pop("template", None)
        if template is not None:
            data["template"] = SourceTemplate.from_json(template)
        return cls(objects=tuple(objects), **data)


class _Invalid(ValueError):
    """The first problem :meth:`Manifest.from_json` found."""


#: Every field of a stored manifest and its JSON type(s).
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "provider": str,
    "zone": str,
    "snapshot_id": str,
    "snapshot_name": str,
    "instance_id": (str, type(None)),
    "created_at": (str, type(None)),
    "size": int,
    "md5": str,
    "part_size": int,
    "segments": list,
    "tool_version": str,
    "archived_at": str,
}
#: The fields of each format read: format 2 adds ``policy`` and ``template``.
_FIELDS_OF_FORMAT: dict[int, dict[str, type | tuple[type, ...]]] = {
    1: _MANIFEST_FIELDS,
    2: {**_MANIFEST_FIELDS, "policy": (str, type(None)), "template": (dict, type(None))},
}
#: The fields a manifest's key path names, in path order.
_KEY_FIELDS = ("provider", "zone", "snapshot_id")
_SEGMENT_FIELDS: dict[str, type] = {"key": str, "size": int, "etag": str, "offset": int}


def _check_type(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    # JSON true is an int to Python, but never a size or a format.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Invalid(f"{name} is a {type(value).__name__}, not {_type_names(kind)}")


def shown(value: Any) -> str:
    """``repr(value)``, cut short: a hostile manifest's strings may be long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _segment(item: Any, n: int, expected_key: str, offset: int) -> ArchivedObject:
    """Return segment ``n`` as an :class:`ArchivedObject`, checked."""
    if not isinstance(item, dict):
        raise _Invalid(f"segment {n} is a {type(item).__name__}, not an object")
    missing = sorted(_SEGMENT_FIELDS.keys() - item.keys())
    if missing:
        raise _Invalid(f"segment {n} has no {missing[0]!r}")
    unknown = sorted(item.keys() - _SEGMENT_FIELDS.keys())
    if unknown:
        raise _Invalid(f"segment {n} has unknown field {shown(unknown[0])}")
    for name, kind in _SEGMENT_FIELDS.items():
        _check_type(f"segment {n} {name}", item[name], kind)
    if item["key"] != expected_key:
        raise _Invalid(f"segment {n} key {shown(item['key'])} is not {expected_key!r}")
    if item["size"] <= 0:
        raise _Invalid(f"segment {n} size {shown(item['size'])} is not positive")
    if not item["etag"]:
        raise _Invalid(f"segment {n} has an empty etag")
    if item["offset"] != offset:
        raise _Invalid(f"segment {n} offset {shown(item['offset'])} is not {offset}")
    return ArchivedObject(**item)


@dataclass(frozen=True)
class ArchiveResult:
    """Where a verified archive is: ``bucket``, ``manifest_key``, the image's ``md5`` and
    ``size``, and its ``objects`` in order."""

    bucket: str
    manifest_key: str
    md5: str
    size: int
    objects: list[ArchivedObject]

    def to_dict(self) -> dict[str, Any]:
        """The one JSON shape of a result: what a done job records and ``archive --json``
        prints (``bucket``, ``manifest``, ``md5``, ``size``, ``objects``)."""
        return {
            "bucket": self.bucket,
            "manifest": self.manifest_key,
            "md5": self.md5,
            "size": self.size,
            "objects": [asdict(item) for item in self.objects],
        }
