"""A fast local S3 source: GETs of stored files, the read side's null sink.

moto is one Python process that reads every object from a spooled temporary file in a Python
loop; it sets the pace of any client. This server answers, path-style, just what the restore
clients ask for: HeadObject, GetObject (whole or one ``Range``, served with ``sendfile`` from
files on tmpfs), ListObjectsV2 (for rclone) and the bucket's HEAD. It checks no signature.
Objects are registered by the parent before a run (``PUT /_source/objects`` with the JSON map
``{"bucket/key": "/path/of/the/file"}``).

Run as ``python -m bench.source PORT``; :class:`LocalSource` is the parent's side.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from email.utils import formatdate
from xml.sax.saxutils import escape

from aiohttp import web

from bench.server import ServerProcess

_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


class Source:
    """The served objects: ``bucket/key`` → file path (and a fake ETag per file)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.etags: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_put("/_source/objects", self.register)
        app.router.add_get("/_source/stats", self.stats)
        app.router.add_route("*", "/{bucket}", self.bucket)
        app.router.add_route("*", "/{bucket}/{key:.+}", self.object)
        return app

    async def register(self, request: web.Request) -> web.Response:
        for name, path in dict(await request.json()).items():
            self.files[name] = path
            self.etags[name] = hashlib.md5(name.encode()).hexdigest()
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"objects": len(self.files)})

    async def bucket(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        if request.method == "HEAD":
            return web.Response(status=200)
        prefix = request.query.get("prefix", "")
        items = ""
        for name, path in sorted(self.files.items()):
            owner, _, key = name.partition("/")
            if owner == bucket and key.startswith(prefix):
                items += (
                    f"<Contents><Key>{escape(key)}</Key><Size>{os.path.getsize(path)}</Size>"
                    f"<ETag>&quot;{self.etags[name]}&quot;</ETag>"
                    "<LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                    "<StorageClass>STANDARD</StorageClass></Contents>"
                )
        body = (
            f"<ListBucketResult {_NS}><Name>{escape(bucket)}</Name>"
            f"<Prefix>{escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>{items}"
            "</ListBucketResult>"
        )
        return web.Response(
            text='<?xml version="1.0" encoding="UTF-8"?>\n' + body, content_type="application/xml"
        )

    async def object(self, request: web.Request) -> web.StreamResponse:
        name = f"{request.match_info['bucket']}/{request.match_info['key']}"
        path = self.files.get(name)
        if path is None:
            body = "<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
            status = 404
            if request.method == "HEAD":
                return web.Response(status=status)
            return web.Response(status=status, text=body, content_type="application/xml")
        headers = {
            "ETag": f'"{self.etags[name]}"',
            "Last-Modified": formatdate(usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        # Whole or ranged (206 with Content-Range), by sendfile; HEAD answers the length only.
        return web.FileResponse(path, headers=headers)


class LocalSource(ServerProcess):
    """The parent's handle on a ``python -m bench.source`` child process; a context manager."""

    def __enter__(self) -> LocalSource:
        self._start([sys.executable, "-m", "bench.source", str(self.port)], "/_source/stats")
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def serve(self, objects: dict[str, str]) -> None:
        """Serve each file of ``objects`` (``bucket/key`` → path) from now on."""
        request = urllib.request.Request(
            f"{self.endpoint}/_source/objects", data=json.dumps(objects).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()


def main(argv: list[str]) -> None:
    """Serve on ``127.0.0.1:PORT`` until terminated."""
    web.run_app(Source().app(), host="127.0.0.1", port=int(argv[0]), access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
