"""moto's S3 server in a process of its own, with a fresh bucket per measured run."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

import boto3

from bench.server import ServerProcess

#: moto accepts any credentials; every client of the benchmark uses these.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer(ServerProcess):
    """``moto_server`` on a loopback port, in its own process; a context manager.

    moto keeps object bodies in spooled temporary files (on disk past a few MiB), so each
    run's bucket is emptied and deleted afterwards (:meth:`drop_bucket`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._buckets = itertools.count()
        self._client: Any = None

    def __enter__(self) -> MotoServer:
        command = [
            str(Path(sys.executable).with_name("moto_server")),
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self._start(command, "/moto-api/", env={**os.environ, **CREDENTIALS})
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        return self

    def new_bucket(self) -> str:
        """Create an empty bucket and return its name."""
        name = f"bench-{next(self._buckets)}"
        self._client.create_bucket(Bucket=name)
        return name

    def object_size(self, bucket: str, key: str) -> int | None:
        """Return the size of ``key``, or ``None`` if it is not there."""
        try:
            return int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except self._client.exceptions.ClientError:
            return None

    def list_parts(self, bucket: str) -> list[tuple[str, int, int]]:
        """Return ``(key, part number, size)`` of every part of every open upload."""
        found = []
        for upload in self._client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            answer = self._client.list_parts(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            found += [(upload["Key"], p["PartNumber"], p["Size"]) for p in answer.get("Parts", [])]
        return found

    def drop_bucket(self, bucket: str) -> None:
        """Abort the uploads, delete the objects and the bucket (frees moto's files)."""
        client = self._client
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
