"""The archive store: an S3-compatible bucket holding verified snapshot images.

Key layout under ``S3Settings.prefix`` (default ``snaparchive/``)::

    {prefix}{provider}/{zone}/{snapshot_id}/manifest.json     written last: a verified archive
    {prefix}{provider}/{zone}/{snapshot_id}/image             the image, when it is one object
    {prefix}{provider}/{zone}/{snapshot_id}/image.seg00000    ... or its segments, in order
    {prefix}{provider}/{zone}/{snapshot_id}/image.seg00001

Only the manifest makes an archive: image objects without one are leftovers of a
failed commit and are never read as an archive. Every boto3 call runs in a thread
pool owned by the store, so the event loop never blocks on S3; botocore's
``standard`` retry mode retries 5xx, ``SlowDown`` and dropped connections with
backoff, and what still fails becomes :class:`~worker.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, InvalidRegionError

from worker.errors import (
    ArchiveExists,
    ConfigError,
    NotFound,
    ObjectExists,
    SnaparchiveError,
    StoreError,
    StoreIntegrityError,
)
from worker.settings import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
#: The most bytes of a manifest read: a real one is a few hundred bytes per segment.
MANIFEST_LIMIT = 1 << 20
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_NAME = re.compile(r"image(\.seg\d{5})?")
#: Attempts per S3 call, first one included (botocore ``standard`` mode backs off up to 20 s).
#: botocore's ``total_max_attempts`` counts attempts; its ``max_attempts`` counts retries.
S3_MAX_ATTEMPTS = 8
#: An S3 error code as AWS writes them; anything else in its place is not shown.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9.]{1,64}$")


def s3_client(settings: S3Settings, *, max_pool_connections: int = 10) -> Any:
    """Return a boto3 S3 client for ``settings``.

    Parameters:
      settings: Endpoint, region and addressing style; credentials come from boto3's chain.
      max_pool_connections: HTTP connections kept, at least the threads calling it (default 10).

    Checksums are sent and checked only where an operation requires them: boto3's
    default CRC32 on every upload breaks many S3-compatible stores (see
    ``transfer-notes.md``). Payloads are not SHA256-signed (``UNSIGNED-PAYLOAD``): that
    would be one more full hash pass per part, and the transfer engine checks each part
    against its own MD5 instead. TLS verification stays on.
    """
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": settings.addressing_style, "payload_signing_enabled": False},
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        max_pool_connections=max_pool_connections,
        connect_timeout=30,
        read_timeout=300,
    )
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config
        )
    except InvalidRegionError:
        raise ConfigError(
            f"SNAPARCHIVE_S3_REGION: not a region name: {settings.region!r}"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"SNAPARCHIVE_S3_ENDPOINT: {exc}") from None


@dataclass(frozen=True)
class ArchiveId:
    """Which archive: the source snapshot's ``provider``, ``zone`` and ``snapshot_id``."""

    provider: str
    zone: str
    snapshot_id: str

    def __str__(self) -> str:
        return f"{self.zone}/{self.snapshot_id}"


@dataclass(frozen=True)
class StoredObject:
    """An object as HEAD reports it: ``size`` in bytes and ``etag`` (without quotes)."""

    size: int
    etag: str


@dataclass(frozen=True)
class ArchivedObject:
    """One stored object of an archive: its ``key``, ``size`` in bytes, multipart ``etag``
    (without quotes) and ``offset`` of its first byte in the image."""

    key: str
    size: int
    etag: str
    offset: int = 0


@dataclass(frozen=True)
class Manifest:
    """The JSON document that commits an archive; see :meth:`to_json` for the format.

    Parameters:
      provider, zone, snapshot_id, snapshot_name, instance_id, created_at: The source snapshot.
      size: Image size in bytes.
      md5: The image's MD5, equal to the export's published md5sum.
      part_size: Multipart part size used for the objects.
      objects: The image objects in order; concatenated they are the image.
      tool_version: ``worker.__version__`` of the writer.
      archived_at: ISO 8601 UTC time of the commit.
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
        :meth:`ArchiveStore.image_key` names it, in order, with a positive size, a
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
        if type(data.get("format")) is not int or data["format"] != MANIFEST_FORMAT:
            raise _Invalid(f"unknown format {_shown(data.get('format'))}")
        missing = sorted(_MANIFEST_FIELDS.keys() - data.keys())
        if missing:
            raise _Invalid(f"no {missing[0]!r}")
        unknown = sorted(data.keys() - _MANIFEST_FIELDS.keys())
        if unknown:
            raise _Invalid(f"unknown field {_shown(unknown[0])}")
        for field_name, kind in _MANIFEST_FIELDS.items():
            _check_type(field_name, data[field_name], kind)
        for field_name, expected in zip(_KEY_FIELDS, path[-3:], strict=True):
            if data[field_name] != expected:
                raise _Invalid(
                    f"{field_name} {_shown(data[field_name])} is not its key's {expected!r}"
                )
        if not _MD5_HEX.fullmatch(data["md5"]):
            raise _Invalid(f"md5 {_shown(data['md5'])} is not 32 lowercase hex digits")
        for field_name in ("size", "part_size"):
            if data[field_name] <= 0:
                raise _Invalid(f"{field_name} {_shown(data[field_name])} is not positive")
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
#: The fields a manifest's key path names, in path order.
_KEY_FIELDS = ("provider", "zone", "snapshot_id")
_SEGMENT_FIELDS: dict[str, type] = {"key": str, "size": int, "etag": str, "offset": int}


def _check_type(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    # JSON true is an int to Python, but never a size or a format.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Invalid(f"{name} is a {type(value).__name__}, not {_type_names(kind)}")


def _shown(value: Any) -> str:
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
        raise _Invalid(f"segment {n} has unknown field {_shown(unknown[0])}")
    for name, kind in _SEGMENT_FIELDS.items():
        _check_type(f"segment {n} {name}", item[name], kind)
    if item["key"] != expected_key:
        raise _Invalid(f"segment {n} key {_shown(item['key'])} is not {expected_key!r}")
    if item["size"] <= 0:
        raise _Invalid(f"segment {n} size {_shown(item['size'])} is not positive")
    if not item["etag"]:
        raise _Invalid(f"segment {n} has an empty etag")
    if item["offset"] != offset:
        raise _Invalid(f"segment {n} offset {_shown(item['offset'])} is not {offset}")
    return ArchivedObject(**item)


def image_name(segment: int, segments: int, folder: str = "") -> str:
    """Return the key of image object ``segment`` (from 0) of ``segments`` in ``folder``:
    ``image`` when there is one, else ``image.seg00000``, ``image.seg00001``, ..."""
    return f"{folder}image" if segments == 1 else f"{folder}image.seg{segment:05d}"


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
        """Return a JSON-serialisable copy (for the job record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveResult:
        return cls(
            bucket=data["bucket"],
            manifest_key=data["manifest_key"],
            md5=data["md5"],
            size=int(data["size"]),
            objects=[ArchivedObject(**item) for item in data["objects"]],
        )


@dataclass
class ArchiveScan:
    """What :meth:`ArchiveStore.scan_archives` found: ``archived``, the ``(provider, zone,
    snapshot_id)`` of every archive with a valid manifest, and ``refused``, one line per
    manifest that is not valid (not counted)."""

    archived: set[tuple[str, str, str]] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UploadedPart:
    """UploadPart's answer: the part's ``etag`` and whether it is the part's hex MD5
    (``etag_is_md5``: true on AWS without KMS/SSE-C, SOS, MinIO, Ceph, moto)."""

    etag: str
    etag_is_md5: bool


@dataclass(frozen=True)
class StoredPart:
    """A part as ListParts reports it: S3 part ``number``, ``size``, ``etag`` (no quotes)."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class OpenUpload:
    """An incomplete multipart upload: object ``key``, ``upload_id``, ``initiated`` time."""

    key: str
    upload_id: str
    initiated: datetime | None


class ViewReader(io.RawIOBase):
    """A seekable, read-only file over a memoryview: botocore takes no memoryview as a body,
    and ``bytes(view)`` would copy a whole part."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.cast("B")
        self._position = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._view[self._position : self._position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def _component(name: str, value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{name} must be a non-empty name without '/', got {value!r}")
    return value


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _stored_length(answer: dict[str, Any]) -> int | None:
    """Return the whole object's length as a ranged GetObject states it: the total of
    ``Content-Range`` (206), else ``Content-Length`` (a store that ignored the range)."""
    content_range = str(answer.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = answer.get("ContentLength")
    return int(length) if isinstance(length, int) else None


def _read_at_most(body: Any, limit: int) -> bytes | None:
    """Read ``body`` to its end; ``None`` as soon as it proves longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := body.read(min(limit + 1 - size, 64 << 10)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


class ArchiveStore:
    """Archive objects, manifests and multipart uploads in one bucket.

    Parameters:
      settings: The bucket, prefix, endpoint and addressing style.
      client: A boto3 S3 client; default: :func:`s3_client` for ``settings``.
      max_workers: Threads running boto3 calls; size it to the upload concurrency
        plus one for control calls (default 5).

    Use as an async context manager, or call :meth:`close`.
    """

    def __init__(self, settings: S3Settings, client: Any = None, *, max_workers: int = 5) -> None:
        settings.require_bucket()
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client = client or s3_client(settings, max_pool_connections=max_workers + 2)
        # Errors name the store by host (and port) only.
        endpoint = urlsplit(str(getattr(self.client.meta, "endpoint_url", "") or ""))
        self._endpoint = endpoint.netloc.rpartition("@")[2] or "the store"
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3")
        # Flipped off the first time the store answers If-None-Match with NotImplemented.
        self.conditional_writes = True

    async def __aenter__(self) -> ArchiveStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the thread pool (waiting for calls in flight)."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run ``fn(**kwargs)`` in the pool; a transport failure becomes :class:`StoreError`.

        :class:`ClientError` (an answer from the store) goes to the caller, which knows
        which codes it expects; it turns the rest into :meth:`_error`. Neither message
        quotes botocore's text: it holds the endpoint URL, the key and the upload id.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            failure = f"S3 {what} failed: {type(exc).__name__} ({self._endpoint})"
        raise StoreError(failure)

    def _error(self, what: str, exc: ClientError) -> StoreError:
        """The store's refusal, by its HTTP status and error code (not its free text)."""
        code, status = _code(exc)
        shown = f"HTTP {status} {code}" if _ERROR_CODE.match(code) else f"HTTP {status}"
        return StoreError(f"S3 {what} failed: {shown} ({self._endpoint})")

    # -- keys ------------------------------------------------------------------------------

    def archive_prefix(self, provider: str, zone: str, snapshot_id: str) -> str:
        """Return ``{prefix}{provider}/{zone}/{snapshot_id}/``.

        Raises:
          ValueError: When a component is empty or contains ``/``.
        """
        parts = (
            _component("provider", provider),
            _component("zone", zone),
            _component("snapshot id", snapshot_id),
        )
        return f"{self.prefix}{'/'.join(parts)}/"

    def manifest_key(self, provider: str, zone: str, snapshot_id: str) -> str:
        """Return the key of the archive's manifest."""
        return self.archive_prefix(provider, zone, snapshot_id) + MANIFEST_NAME

    def image_key(
        self, provider: str, zone: str, snapshot_id: str, segment: int, segments: int
    ) -> str:
        """Return the key of image object ``segment`` (from 0) of ``segments``: ``image``
        when there is one, else ``image.seg00000``, ``image.seg00001``, ..."""
        return image_name(segment, segments, self.archive_prefix(provider, zone, snapshot_id))

    # -- multipart -------------------------------------------------------------------------

    async def create_upload(self, key: str, metadata: dict[str, str]) -> str:
        """Start a multipart upload of ``key`` with user ``metadata``; return its upload id."""
        try:
            answer = await self._call(
                "CreateMultipartUpload",
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                Metadata=metadata,
                ContentType="application/octet-stream",
            )
        except ClientError as exc:
            raise self._error("CreateMultipartUpload", exc) from None
        return str(answer["UploadId"])

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray | memoryview
    ) -> UploadedPart:
        """Upload part ``number`` of an upload; return its ETag and whether that is an MD5.

        ``body`` is sent without a copy: bytes and bytearrays go out in one ``sendall``,
        a memoryview (the short tail of a reused buffer) is read through :class:`ViewReader`.
        """
        if isinstance(body, memoryview):
            body = ViewReader(body)  # type: ignore[assignment]
        try:
            answer = await self._call(
                "UploadPart",
                self.client.upload_part,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
        except ClientError as exc:
            raise self._error(f"UploadPart {number}", exc) from None
        # With SSE-KMS or SSE-C the ETag is not the MD5 of the bytes (AWS documents this).
        encrypted = answer.get("SSECustomerAlgorithm") or str(
            answer.get("ServerSideEncryption", "")
        ).startswith("aws:kms")
        etag = _unquote(answer["ETag"])
        return UploadedPart(etag, bool(_MD5_HEX.match(etag)) and not encrypted)

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart] | None:
        """Return the parts stored for an upload, by number; ``None`` if the upload is gone."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            try:
                page = await self._call(
                    "ListParts",
                    self.client.list_parts,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
            except ClientError as exc:
                if _code(exc)[0] == "NoSuchUpload":
                    return None
                raise self._error("ListParts", exc) from None
            for item in page.get("Parts", []):
                parts.append(
                    StoredPart(int(item["PartNumber"]), int(item["Size"]), _unquote(item["ETag"]))
                )
            if not page.get("IsTruncated"):
                return sorted(parts, key=lambda part: part.number)
            marker = int(page["NextPartNumberMarker"])

    async def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> str:
        """Complete an upload from its parts' ETags (part ``i + 1`` has ``etags[i]``) and
        return the object's ETag. Refuses to replace an existing object.

        Raises:
          ObjectExists: When ``key`` already exists (If-None-Match, or a HEAD where the
            store has no conditional writes).
        """
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {
                "Parts": [{"PartNumber": i + 1, "ETag": f'"{e}"'} for i, e in enumerate(etags)]
            },
        }
        answer = await self._write_once("CompleteMultipartUpload", key, request, ObjectExists)
        return _unquote(answer["ETag"])

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, dropping its parts; an upload already gone is fine."""
        try:
            await self._call(
                "AbortMultipartUpload",
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except ClientError as exc:
            if _code(exc)[0] != "NoSuchUpload":
                raise self._error("AbortMultipartUpload", exc) from None

    async def list_open_uploads(self, prefix: str | None = None) -> list[OpenUpload]:
        """Return the incomplete multipart uploads under ``prefix`` (default: the store's)."""
        uploads: list[OpenUpload] = []
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix if prefix is None else prefix,
        }
        while True:
            try:
                page = await self._call(
                    "ListMultipartUploads", self.client.list_multipart_uploads, **request
                )
            except ClientError as exc:
                raise self._error("ListMultipartUploads", exc) from None
            for item in page.get("Uploads", []):
                uploads.append(OpenUpload(item["Key"], item["UploadId"], item.get("Initiated")))
            if not page.get("IsTruncated"):
                return uploads
            request["KeyMarker"] = page["NextKeyMarker"]
            request["UploadIdMarker"] = page["NextUploadIdMarker"]

    # -- objects and manifests -------------------------------------------------------------

    async def delete_object(self, key: str) -> None:
        """Delete ``key`` (absent is fine)."""
        try:
            await self._call("DeleteObject", self.client.delete_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise self._error("DeleteObject", exc) from None

    async def stat(self, key: str) -> StoredObject | None:
        """Return the size and ETag of ``key`` (HEAD), or ``None`` when it does not exist."""
        try:
            answer = await self._call(
                "HeadObject", self.client.head_object, Bucket=self.bucket, Key=key
            )
        except ClientError as exc:
            if _code(exc)[1] == 404:
                return None
            raise self._error("HeadObject", exc) from None
        return StoredObject(int(answer["ContentLength"]), _unquote(answer["ETag"]))

    async def exists(self, key: str) -> bool:
        """Return whether ``key`` exists (HEAD)."""
        return await self.stat(key) is not None

    async def put_manifest(self, manifest: Manifest) -> str:
        """Write ``manifest`` at its key, never over an existing one; return the key.

        Raises:
          ArchiveExists: When a manifest is already there.
        """
        key = self.manifest_key(manifest.provider, manifest.zone, manifest.snapshot_id)
        request = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": manifest.to_json(),
            "ContentType": "application/json",
            "Metadata": {"source-md5": manifest.md5},
        }
        await self._write_once("PutObject", key, request, ArchiveExists)
        return key

    async def read_manifest(self, key: str) -> Manifest:
        """Return the manifest stored at ``key``, checked by :meth:`Manifest.from_json`.

        Only a manifest key (``{prefix}{provider}/{zone}/{snapshot_id}/manifest.json``) is
        read, and only its first :data:`MANIFEST_LIMIT` bytes are asked for (a Range
        request); an object longer than that is refused by its stated length, unread.
        An image key passed by mistake never pulls an image into memory.

        Raises:
          NotFound: When there is no object at ``key``.
          StoreIntegrityError: When ``key`` is not a manifest key, or the object is not a
            valid manifest (too long, empty, malformed).
          StoreError: When the store fails.
        """
        if self._manifest_key_parts(key) is None:
            raise StoreIntegrityError(
                f"not a manifest key: {_shown(key)} (expected "
                f"{self.prefix}PROVIDER/ZONE/SNAPSHOT/{MANIFEST_NAME})"
            )
        try:
            answer = await self._call(
                "GetObject",
                self.client.get_object,
                Bucket=self.bucket,
                Key=key,
                Range=f"bytes=0-{MANIFEST_LIMIT}",
            )
        except ClientError as exc:
            code = _code(exc)[0]
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"no manifest at {key}", 404) from None
            if code == "InvalidRange":  # what S3 answers for any range of an empty object
                raise StoreIntegrityError(f"malformed manifest {key}: empty object") from None
            raise self._error("GetObject", exc) from None
        body = answer["Body"]
        try:
            stored = _stored_length(answer)
            if stored is not None and stored > MANIFEST_LIMIT:
                raise StoreIntegrityError(
                    f"malformed manifest {key}: {stored} bytes, a manifest is at most "
                    f"{MANIFEST_LIMIT}"
                )
            raw = await self._call("GetObject", _read_at_most, body=body, limit=MANIFEST_LIMIT)
        finally:
            # Closing a body not read to its end drops the connection: no more bytes come.
            body.close()
        if raw is None:
            raise StoreIntegrityError(
                f"malformed manifest {key}: longer than a manifest's {MANIFEST_LIMIT} bytes"
            )
        return Manifest.from_json(raw, key)

    def _manifest_key_parts(self, key: str) -> tuple[str, str, str] | None:
        """Return ``(provider, zone, snapshot_id)`` of a manifest key of this store, or
        ``None`` when ``key`` is not one."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        if len(parts) != 4 or parts[3] != MANIFEST_NAME:
            return None
        if any(not part or part in (".", "..") for part in parts[:3]):
            return None
        return parts[0], parts[1], parts[2]

    def result_from_manifest(self, manifest: Manifest) -> ArchiveResult:
        """Return the :class:`ArchiveResult` a stored ``manifest`` describes."""
        return ArchiveResult(
            bucket=self.bucket,
            manifest_key=self.manifest_key(manifest.provider, manifest.zone, manifest.snapshot_id),
            md5=manifest.md5,
            size=manifest.size,
            objects=list(manifest.objects),
        )

    async def find_archive(self, provider: str, zone: str, snapshot_id: str) -> Manifest | None:
        """Return the manifest of the verified archive of a snapshot, or ``None``."""
        try:
            return await self.read_manifest(self.manifest_key(provider, zone, snapshot_id))
        except NotFound:
            return None

    async def list_keys(self, prefix: str) -> list[str]:
        """Return the keys of every object under ``prefix``."""
        keys: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                page = await self._call("ListObjectsV2", self.client.list_objects_v2, **request)
            except ClientError as exc:
                raise self._error("ListObjectsV2", exc) from None
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return keys
            request["ContinuationToken"] = page["NextContinuationToken"]

    async def list_image_keys(self, prefix: str) -> list[str]:
        """Return the keys of the image objects (``image``, ``image.segNNNNN``) directly
        under an archive's ``prefix``; anything else there is not the transfer's."""
        return [k for k in await self.list_keys(prefix) if _IMAGE_NAME.fullmatch(k[len(prefix) :])]

    async def archived_snapshots(self, concurrency: int = 8) -> set[tuple[str, str, str]]:
        """Return ``(provider, zone, snapshot_id)`` of every archive whose manifest is valid
        (see :meth:`scan_archives`)."""
        return (await self.scan_archives(concurrency)).archived

    async def scan_archives(self, concurrency: int = 8) -> ArchiveScan:
        """Read and check every manifest under the store's prefix.

        A manifest key is only a claim: the archive counts when its manifest reads back
        valid (:meth:`read_manifest`). Manifests are read ``concurrency`` at a time
        (default 8; the store's threads bound it too); one deleted meanwhile is skipped.

        Raises:
          StoreError: When the store fails (the scan stops at the first failure).
        """
        keys = iter(
            [key for key in await self.list_keys(self.prefix) if self._manifest_key_parts(key)]
        )
        scan = ArchiveScan()
        failures: list[SnaparchiveError] = []

        async def reader() -> None:
            for key in keys:  # one iterator shared by every reader: each key is read once
                if failures:
                    return
                try:
                    manifest = await self.read_manifest(key)
                except NotFound:
                    continue
                except StoreIntegrityError as exc:
                    scan.refused.append(str(exc))
                    continue
                except SnaparchiveError as exc:
                    failures.append(exc)
                    return
                scan.archived.add((manifest.provider, manifest.zone, manifest.snapshot_id))

        await asyncio.gather(*(reader() for _ in range(max(1, concurrency))))
        if failures:
            raise failures[0]
        scan.refused.sort()
        return scan

    async def _write_once(
        self,
        what: str,
        key: str,
        request: dict[str, Any],
        exists: Callable[[str], Exception],
    ) -> dict[str, Any]:
        """Run a PutObject or CompleteMultipartUpload that must not replace ``key``; raise
        ``exists(key)`` when it is there.

        ``If-None-Match: *`` makes the store refuse atomically (AWS, MinIO, Ceph, moto).
        Stores without conditional writes answer NotImplemented; then a HEAD guards the
        write instead (racy, but the lease of the job store keeps writers apart).
        """
        fn = (
            self.client.put_object if what == "PutObject" else self.client.complete_multipart_upload
        )
        if self.conditional_writes:
            try:
                return await self._call(what, fn, IfNoneMatch="*", **request)
            except ClientError as exc:
                code, status = _code(exc)
                if status == 412 or code == "PreconditionFailed":
                    raise exists(key) from None
                if code != "NotImplemented" and status != 501:
                    raise self._error(what, exc) from None
                log.warning("store refuses If-None-Match; guarding writes with HEAD instead")
                self.conditional_writes = False
        if await self.exists(key):
            raise exists(key)
        try:
            return await self._call(what, fn, **request)
        except ClientError as exc:
            raise self._error(what, exc) from None
