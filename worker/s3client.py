"""The boto3 client snaparchive talks to S3 with, and the small helpers around its calls."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, InvalidRegionError

from worker.errors import ConfigError
from worker.settings import S3Settings

#: botocore's signer logs the string it signs and the signature at DEBUG: with a presigned URL's
#: signature, the URL (a credential) could be rebuilt from the log. Those lines never go out.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

#: Attempts per S3 call, first one included (botocore ``standard`` mode backs off up to 20 s).
#: botocore's ``total_max_attempts`` counts attempts; its ``max_attempts`` counts retries.
S3_MAX_ATTEMPTS = 8


def s3_client(settings: S3Settings, *, max_pool_connections: int = 10) -> Any:
    """Return a boto3 S3 client for ``settings``.

    Parameters:
      settings: Endpoint, region and addressing style; credentials come from boto3's chain.
      max_pool_connections: HTTP connections kept, at least the threads calling it (default 10).

    Checksums are sent and checked only where an operation requires them: boto3's
    default CRC32 on every upload breaks many S3-compatible stores. Payloads are not
    SHA256-signed (``UNSIGNED-PAYLOAD``): that would be one more full hash pass per part,
    and the transfer engine checks each part against its own MD5 instead. TLS
    verification stays on.
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


def presigned_get_url(settings: S3Settings, key: str, ttl: int) -> str:
    """Return a presigned GET URL of ``key`` in the bucket, signed with SigV4, valid ``ttl``
    seconds (at most 7 days).

    The URL is a credential: whoever holds it reads the object until it expires. Make it
    where it is used, and never log, store or send it anywhere else. Signing is local: no
    request is made.
    """
    config = Config(signature_version="s3v4", s3={"addressing_style": settings.addressing_style})
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config
    )
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": settings.bucket, "Key": key}, ExpiresIn=ttl
    )
    return str(url)


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


def error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def unquote(etag: str) -> str:
    return etag.strip('"')


def stored_length(answer: dict[str, Any]) -> int | None:
    """Return the whole object's length as a ranged GetObject states it: the total of
    ``Content-Range`` (206), else ``Content-Length`` (a store that ignored the range)."""
    content_range = str(answer.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = answer.get("ContentLength")
    return int(length) if isinstance(length, int) else None


def read_at_most(body: Any, limit: int) -> bytes | None:
    """Read ``body`` to its end; ``None`` as soon as it proves longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := body.read(min(limit + 1 - size, 64 << 10)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def pages(client: Any, operation: str, **request: Any) -> Iterator[dict[str, Any]]:
    """Every page of a listing, through boto3's paginator (in the calling thread)."""
    return iter(client.get_paginator(operation).paginate(**request))
