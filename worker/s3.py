"""An S3-compatible bucket, called from asyncio: the operations the archive needs.

Every boto3 call runs in a thread pool owned by the :class:`Bucket`, so the event loop never
blocks on S3. botocore's ``standard`` retry mode retries 5xx, ``SlowDown`` and dropped
connections with backoff; what still fails becomes :class:`~worker.errors.StoreError`, whose
text names the operation, the HTTP status and error code and the store's host, never
botocore's own text (it holds the endpoint URL, the key and the upload id). Listings go
through boto3's paginators.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from worker.errors import NotFound, ObjectExists, StoreError
from worker.manifest import MD5_HEX
from worker.s3client import (
    ViewReader,
    error_code,
    pages,
    read_at_most,
    s3_client,
    stored_length,
    unquote,
)
from worker.settings import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: An S3 error code as AWS writes them; anything else in its place is not shown.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9.]{1,64}$")


@dataclass(frozen=True)
class ListedObject:
    """An object as ListObjectsV2 reports it: ``key``, ``size``, ``last_modified``."""

    key: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class StoredObject:
    """An object as HEAD reports it: ``size`` in bytes and ``etag`` (without quotes)."""

    size: int
    etag: str


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


class Bucket:
    """One bucket of an S3-compatible store, with the calls the archive makes.

    Parameters:
      settings: The bucket, endpoint, region and addressing style.
      client: A boto3 S3 client; default: :func:`s3_client` for ``settings``.
      max_workers: Threads running boto3 calls; size it to the parts uploading at once plus
        one for control calls (default 5).

    Use as an async context manager, or call :meth:`close`.
    """

    def __init__(self, settings: S3Settings, client: Any = None, *, max_workers: int = 5) -> None:
        settings.require_bucket()
        self.settings = settings
        self.bucket = settings.bucket
        self.max_workers = max_workers
        self.client = client or s3_client(settings, max_pool_connections=max_workers + 2)
        # Errors name the store by host (and port) only.
        endpoint = urlsplit(str(getattr(self.client.meta, "endpoint_url", "") or ""))
        self.endpoint = endpoint.netloc.rpartition("@")[2] or "the store"
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3")
        # Flipped off the first time the store answers If-None-Match with NotImplemented.
        self.conditional_writes = True

    async def __aenter__(self) -> Bucket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the thread pool (waiting for calls in flight)."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run ``fn(**kwargs)`` in the pool; a transport failure becomes :class:`StoreError`.

        :class:`ClientError` (an answer from the store) goes to the caller, which knows
        which codes it expects; it turns the rest into :meth:`error`.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            failure = f"S3 {what} failed: {type(exc).__name__} ({self.endpoint})"
        raise StoreError(failure)

    def error(self, what: str, exc: ClientError) -> StoreError:
        """The store's refusal, by its HTTP status and error code (not its free text)."""
        code, status = error_code(exc)
        shown = f"HTTP {status} {code}" if _ERROR_CODE.match(code) else f"HTTP {status}"
        return StoreError(f"S3 {what} failed: {shown} ({self.endpoint})")

    async def _list(self, what: str, operation: str, field: str, **request: Any) -> list[Any]:
        """The ``field`` items of every page of a listing."""

        def collect() -> list[Any]:
            items: list[Any] = []
            for page in pages(self.client, operation, Bucket=self.bucket, **request):
                items.extend(page.get(field, []))
            return items

        return await self.call(what, collect)

    # -- multipart -------------------------------------------------------------------------

    async def create_upload(self, key: str, metadata: dict[str, str]) -> str:
        """Start a multipart upload of ``key`` with user ``metadata``; return its upload id."""
        try:
            answer = await self.call(
                "CreateMultipartUpload",
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                Metadata=metadata,
                ContentType="application/octet-stream",
            )
        except ClientError as exc:
            raise self.error("CreateMultipartUpload", exc) from None
        return str(answer["UploadId"])

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray | memoryview
    ) -> UploadedPart:
        """Upload part ``number`` of an upload; return its ETag and whether that is an MD5.

        ``body`` is sent without a copy: bytes and bytearrays go out in one ``sendall``,
        a memoryview (the short tail of a reused buffer) is read through :class:`ViewReader`.
        """
        payload: Any = ViewReader(body) if isinstance(body, memoryview) else body
        try:
            answer = await self.call(
                "UploadPart",
                self.client.upload_part,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=payload,
            )
        except ClientError as exc:
            raise self.error(f"UploadPart {number}", exc) from None
        # With SSE-KMS or SSE-C the ETag is not the MD5 of the bytes (AWS documents this).
        encrypted = answer.get("SSECustomerAlgorithm") or str(
            answer.get("ServerSideEncryption", "")
        ).startswith("aws:kms")
        etag = unquote(answer["ETag"])
        return UploadedPart(etag, bool(MD5_HEX.fullmatch(etag)) and not encrypted)

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart] | None:
        """Return the parts stored for an upload, by number; ``None`` if the upload is gone."""
        try:
            items = await self._list(
                "ListParts", "list_parts", "Parts", Key=key, UploadId=upload_id
            )
        except ClientError as exc:
            if error_code(exc)[0] == "NoSuchUpload":
                return None
            raise self.error("ListParts", exc) from None
        parts = [
            StoredPart(int(item["PartNumber"]), int(item["Size"]), unquote(item["ETag"]))
            for item in items
        ]
        return sorted(parts, key=lambda part: part.number)

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
        answer = await self.write_once("CompleteMultipartUpload", key, request, ObjectExists)
        return unquote(answer["ETag"])

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, dropping its parts; an upload already gone is fine."""
        try:
            await self.call(
                "AbortMultipartUpload",
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except ClientError as exc:
            if error_code(exc)[0] != "NoSuchUpload":
                raise self.error("AbortMultipartUpload", exc) from None

    async def list_open_uploads(self, prefix: str) -> list[OpenUpload]:
        """Return the incomplete multipart uploads under ``prefix``."""
        try:
            items = await self._list(
                "ListMultipartUploads", "list_multipart_uploads", "Uploads", Prefix=prefix
            )
        except ClientError as exc:
            raise self.error("ListMultipartUploads", exc) from None
        return [OpenUpload(i["Key"], i["UploadId"], i.get("Initiated")) for i in items]

    # -- objects ---------------------------------------------------------------------------

    async def delete_object(self, key: str) -> None:
        """Delete ``key`` (absent is fine)."""
        try:
            await self.call("DeleteObject", self.client.delete_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise self.error("DeleteObject", exc) from None

    async def stat(self, key: str) -> StoredObject | None:
        """Return the size and ETag of ``key`` (HEAD), or ``None`` when it does not exist."""
        try:
            answer = await self.call(
                "HeadObject", self.client.head_object, Bucket=self.bucket, Key=key
            )
        except ClientError as exc:
            if error_code(exc)[1] == 404:
                return None
            raise self.error("HeadObject", exc) from None
        return StoredObject(int(answer["ContentLength"]), unquote(answer["ETag"]))

    async def exists(self, key: str) -> bool:
        """Return whether ``key`` exists (HEAD)."""
        return await self.stat(key) is not None

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        """Return every object under ``prefix``, with its size and last modification."""
        try:
            items = await self._list("ListObjectsV2", "list_objects_v2", "Contents", Prefix=prefix)
        except ClientError as exc:
            raise self.error("ListObjectsV2", exc) from None
        return [
            ListedObject(item["Key"], int(item.get("Size", 0)), item.get("LastModified"))
            for item in items
        ]

    async def list_keys(self, prefix: str) -> list[str]:
        """Return the keys of every object under ``prefix``."""
        return [item.key for item in await self.list_objects(prefix)]

    async def read_small(self, key: str, limit: int) -> bytes | None:
        """Return the whole of a small object, asking for its first ``limit`` bytes only (a
        Range request); ``None`` when it is longer (its stated length, or what arrived, says
        so: the rest is never read).

        Raises:
          NotFound: When there is no object at ``key``.
        """
        try:
            answer = await self.call(
                "GetObject",
                self.client.get_object,
                Bucket=self.bucket,
                Key=key,
                Range=f"bytes=0-{limit}",
            )
        except ClientError as exc:
            code = error_code(exc)[0]
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"no object at {key}", 404) from None
            if code == "InvalidRange":  # what S3 answers for any range of an empty object
                return b""
            raise self.error("GetObject", exc) from None
        body = answer["Body"]
        try:
            stored = stored_length(answer)
            if stored is not None and stored > limit:
                return None
            return await self.call("GetObject", read_at_most, body=body, limit=limit)
        finally:
            # Closing a body not read to its end drops the connection: no more bytes come.
            body.close()

    async def put_object(
        self, key: str, body: bytes, content_type: str = "application/json"
    ) -> None:
        """Write a small object at ``key``, replacing what is there."""
        try:
            await self.call(
                "PutObject",
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
            )
        except ClientError as exc:
            raise self.error("PutObject", exc) from None

    async def put_once(
        self,
        key: str,
        body: bytes,
        exists: Callable[[str], Exception],
        *,
        content_type: str,
        metadata: dict[str, str],
    ) -> None:
        """Write a small object at ``key``, never over an existing one (``exists(key)`` is
        raised then)."""
        request = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "Metadata": metadata,
        }
        await self.write_once("PutObject", key, request, exists)

    async def write_once(
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
                return await self.call(what, fn, IfNoneMatch="*", **request)
            except ClientError as exc:
                code, status = error_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    raise exists(key) from None
                if code != "NotImplemented" and status != 501:
                    raise self.error(what, exc) from None
                log.warning("store refuses If-None-Match; guarding writes with HEAD instead")
                self.conditional_writes = False
        if await self.exists(key):
            raise exists(key)
        try:
            return await self.call(what, fn, **request)
        except ClientError as exc:
            raise self.error(what, exc) from None
