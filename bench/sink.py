"""A null S3 sink: just enough S3 multipart upload for the engine, bodies discarded.

It answers, path-style, in S3's XML: CreateMultipartUpload, UploadPart, ListParts,
CompleteMultipartUpload, AbortMultipartUpload, PutObject, DeleteObject, Get/HeadObject
(always 404: nothing is kept, so every run finds no archive) and ListObjectsV2 and
ListMultipartUploads (always empty). Part bodies are read from the socket and dropped.

So that the sink measures its clients and not itself, it hashes nothing it receives. The
ETag UploadPart answers is, in this order: the ``Content-MD5`` the client sent (S3 would
have checked it and answers the same); the MD5 the parent registered for that part of that
image beforehand (``PUT /_sink/parts/{snapshot-id}`` with the JSON list of its parts' MD5s
for the part size of the next run: the engine checks
each ETag against its own MD5 of the part, as against any store); else a random hex string
(clients that compare it with their own MD5 must be registered, or they fail, loudly).
With ``--hash`` (a stream whose parts nobody knows beforehand, like a conversion's), the sink
hashes each part it receives and answers that MD5 instead of a random string.

Run as ``python -m bench.sink PORT [--hash]``; :class:`NullSink` is the parent's side.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from aiohttp import web

from bench.server import ServerProcess

BUCKET = "bench"
_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


@dataclass
class _Upload:
    key: str
    parts: dict[int, tuple[int, str]] = field(default_factory=dict)  # number -> (size, etag)


class Sink:
    """The sink's state: open uploads and the registered part MD5s, by snapshot id."""

    def __init__(self, hash_parts: bool = False) -> None:
        self.hash_parts = hash_parts
        self.uploads: dict[str, _Upload] = {}
        self.md5s: dict[str, list[str]] = {}
        self.received = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_put("/_sink/parts/{snapshot_id}", self.register)
        app.router.add_get("/_sink/stats", self.stats)
        app.router.add_route("*", "/{bucket}", self.bucket)
        app.router.add_route("*", "/{bucket}/{key:.+}", self.object)
        return app

    async def register(self, request: web.Request) -> web.Response:
        self.md5s[request.match_info["snapshot_id"]] = list(await request.json())
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "open": len(self.uploads)})

    async def bucket(self, request: web.Request) -> web.Response:
        if request.method == "GET" and "uploads" in request.query:
            body = (
                f"<ListMultipartUploadsResult {_NS}><Bucket>{BUCKET}</Bucket>"
                "<IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"
            )
            return _xml(body)
        if request.method == "GET":
            body = (
                f"<ListBucketResult {_NS}><Name>{BUCKET}</Name><KeyCount>0</KeyCount>"
                "<IsTruncated>false</IsTruncated></ListBucketResult>"
            )
            return _xml(body)
        return web.Response(status=200)

    async def object(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        query = request.query
        method = request.method
        if method == "POST" and "uploads" in query:
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = _Upload(key)
            return _xml(
                f"<InitiateMultipartUploadResult {_NS}><Bucket>{BUCKET}</Bucket>"
                f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>"
            )
        if "uploadId" in query:
            upload = self.uploads.get(query["uploadId"])
            if upload is None:
                return _error(404, "NoSuchUpload", "The specified upload does not exist.")
            if method == "PUT":
                return await self._upload_part(request, upload, int(query["partNumber"]))
            if method == "GET":
                return _xml(_list_parts(key, query["uploadId"], upload))
            if method == "POST":
                await request.read()
                del self.uploads[query["uploadId"]]
                joined = b"".join(
                    bytes.fromhex(etag) for _, (_, etag) in sorted(upload.parts.items())
                )
                etag = f"{hashlib.md5(joined).hexdigest()}-{len(upload.parts)}"
                return _xml(
                    f"<CompleteMultipartUploadResult {_NS}><Bucket>{BUCKET}</Bucket>"
                    f"<Key>{escape(key)}</Key><ETag>&quot;{etag}&quot;</ETag>"
                    "</CompleteMultipartUploadResult>"
                )
            if method == "DELETE":
                del self.uploads[query["uploadId"]]
                return web.Response(status=204)
        if method == "PUT":
            body = await request.read()
            return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
        if method == "DELETE":
            return web.Response(status=204)
        if method == "HEAD":
            return web.Response(status=404)
        return _error(404, "NoSuchKey", "The specified key does not exist.")

    async def _upload_part(
        self, request: web.Request, upload: _Upload, number: int
    ) -> web.Response:
        size = 0
        digest = hashlib.md5() if self.hash_parts else None
        while chunk := await request.content.readany():
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
        self.received += size
        sent = request.headers.get("Content-MD5")
        etag = (
            base64.b64decode(sent).hex()
            if sent
            else self._expected_md5(upload.key, number)
            or (digest.hexdigest() if digest is not None else uuid.uuid4().hex)
        )
        upload.parts[number] = (size, etag)
        return web.Response(status=200, headers={"ETag": f'"{etag}"'})

    def _expected_md5(self, key: str, number: int) -> str | None:
        """The registered MD5 of part ``number`` of the image under ``key``, if known.

        Keys look like ``{prefix}{provider}/{zone}/{snapshot_id}/image``; the benchmark
        archives single-segment images, so part ``n`` is the image's part ``n``.
        """
        parts = key.split("/")
        if len(parts) < 2 or parts[-1] != "image":
            return None
        md5s = self.md5s.get(parts[-2], [])
        return md5s[number - 1] if 1 <= number <= len(md5s) else None


def _list_parts(key: str, upload_id: str, upload: _Upload) -> str:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    items = "".join(
        f"<Part><PartNumber>{number}</PartNumber><LastModified>{now}</LastModified>"
        f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size></Part>"
        for number, (size, etag) in sorted(upload.parts.items())
    )
    return (
        f"<ListPartsResult {_NS}><Bucket>{BUCKET}</Bucket><Key>{escape(key)}</Key>"
        f"<UploadId>{upload_id}</UploadId><IsTruncated>false</IsTruncated>{items}"
        "</ListPartsResult>"
    )


def _xml(body: str, status: int = 200) -> web.Response:
    text = '<?xml version="1.0" encoding="UTF-8"?>\n' + body
    return web.Response(status=status, text=text, content_type="application/xml")


def _error(status: int, code: str, message: str) -> web.Response:
    return _xml(f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>", status)


class NullSink(ServerProcess):
    """The parent's handle on a ``python -m bench.sink`` child process; a context manager.

    Parameters:
      port: The loopback port to listen on (default: a free one).
    """

    bucket = BUCKET

    def __init__(self, port: int | None = None, *, hash_parts: bool = False) -> None:
        super().__init__(port)
        self.hash_parts = hash_parts

    def __enter__(self) -> NullSink:
        extra = ["--hash"] if self.hash_parts else []
        self._start([sys.executable, "-m", "bench.sink", str(self.port), *extra], "/_sink/stats")
        return self

    def register(self, snapshot_id: str, md5s: list[str]) -> None:
        """Tell the sink the MD5 of every part of an image, to answer as ETags (until the
        next call for the same image)."""
        request = urllib.request.Request(
            f"{self.endpoint}/_sink/parts/{snapshot_id}",
            data=json.dumps(md5s).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()


def main(argv: list[str]) -> None:
    """Serve the sink on ``127.0.0.1:PORT`` until terminated."""
    sink = Sink(hash_parts="--hash" in argv[1:])
    web.run_app(sink.app(), host="127.0.0.1", port=int(argv[0]), access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
