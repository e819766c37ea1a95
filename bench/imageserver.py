"""The image server: the Exoscale simulator in a process of its own, driven over a pipe.

The simulator serves generated, deterministic disk images from presigned URLs over loopback
HTTP (Range support included). Running it in its own process keeps its event loop off the
GIL of whatever is measured. The parent talks to it with one JSON object per line on the
child's stdin and stdout:

- ``{"op": "add", "size": N, "part_sizes": [P, ...]}``: add an exported snapshot of ``N``
  bytes and answer its ``id``, presigned ``url``, ``md5`` and ``parts``: for each part size
  ``P``, the hex MD5 of every ``P``-byte part (what the null S3 sink answers as ETags);
- ``{"op": "served", "id": ID}``: answer ``served``, the body bytes sent for it so far.
- ``{"op": "sending", "id": ID}``: answer ``sending``, its downloads sending a body now.
- ``{"op": "throttle", "id": ID, "rate": N}``: serve it at ``N`` bytes/s from now on
  (``null``: at full speed); answer ``{}``.

Run as ``python -m bench.imageserver``; :class:`ImageServer` is the parent's side.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from worker.exoscale import ExoscaleClient
from worker.settings import ExoscaleSettings

KEY = "EXObenchmark00000000000000"
SECRET = "benchmark-secret"
ZONE = "ch-gva-2"


@dataclass(frozen=True)
class Image:
    """An exported snapshot on the image server.

    Parameters:
      id: The snapshot id.
      size: Bytes of the image.
      url: Its presigned URL (valid an hour).
      md5: Its published md5sum.
      parts: By part size, the hex MD5 of each part, for the part sizes asked for.
    """

    id: str
    size: int
    url: str
    md5: str
    parts: dict[int, list[str]] = field(default_factory=dict)


def _part_md5s(sim: Any, snapshot_id: str, size: int, part_size: int) -> list[str]:
    """Hash the image part by part (one pass, one reused buffer)."""
    buffer = bytearray(part_size)
    view = memoryview(buffer)
    md5s: list[str] = []
    with sim.open_image(snapshot_id) as image:
        remaining = size
        while remaining:
            want = min(part_size, remaining)
            got = 0
            while got < want:
                count = image.readinto(view[got:want])
                if not count:
                    raise RuntimeError("the image ended early")
                got += count
            md5s.append(hashlib.md5(view[:want]).hexdigest())
            remaining -= want
    return md5s


def _answer(out: TextIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


def serve(commands: TextIO, out: TextIO) -> None:
    """Run the simulator and answer ``commands`` until they end (see the module docstring)."""
    from worker.simulator import Faults, Simulator  # only the server process needs them

    sim = Simulator(key=KEY, secret=SECRET, seed=0, export_seconds=0)
    with sim.running():
        _answer(out, {"ready": True, "endpoint": sim.endpoint, "host": sim.host})
        for line in commands:
            request = json.loads(line)
            if request["op"] == "add":
                size = int(request["size"])
                snapshot_id = str(uuid.uuid4())
                body = sim.add_snapshot(snapshot_id, size, state="exported", name="bench")
                answer: dict[str, Any] = {
                    "id": snapshot_id,
                    "url": body["export"]["presigned-url"],
                    "md5": body["export"]["md5sum"],
                }
                answer["parts"] = {
                    str(part): _part_md5s(sim, snapshot_id, size, part)
                    for part in request.get("part_sizes", ())
                }
                _answer(out, answer)
            elif request["op"] == "served":
                _answer(out, {"served": sim.bytes_served(request["id"])})
            elif request["op"] == "sending":
                _answer(out, {"sending": sim.downloads_sending(request["id"])})
            elif request["op"] == "throttle":
                rate = request.get("rate")
                sim.set_faults(Faults(slow_rate=rate) if rate else None, snapshot_id=request["id"])
                _answer(out, {})
            else:
                _answer(out, {"error": f"unknown op {request['op']!r}"})


class ImageServer:
    """The parent's handle on a ``python -m bench.imageserver`` child; a context manager."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.host = ""

    def __enter__(self) -> ImageServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.imageserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.endpoint, self.host = hello["endpoint"], hello["host"]
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._process = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._process is not None
        return self._process.pid

    def _read(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the image server exited")
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._read()

    def add(self, size: int, part_sizes: tuple[int, ...] = ()) -> Image:
        """Add an exported image of ``size`` bytes, with its part MD5s for ``part_sizes``
        (hashing takes a few seconds per GiB and pass)."""
        answer = self._ask({"op": "add", "size": size, "part_sizes": list(part_sizes)})
        parts = {int(part): list(md5s) for part, md5s in answer["parts"].items()}
        return Image(answer["id"], size, answer["url"], answer["md5"], parts)

    def served(self, image: Image) -> int:
        """Return the body bytes the server has sent for ``image`` so far."""
        return int(self._ask({"op": "served", "id": image.id})["served"])

    def sending(self, image: Image) -> int:
        """Return how many downloads of ``image`` are sending a body now (a client gone is
        noticed when a write fails)."""
        return int(self._ask({"op": "sending", "id": image.id})["sending"])

    def throttle(self, image: Image, rate: int | None) -> None:
        """Serve ``image`` at ``rate`` bytes per second from now on (``None``: full speed)."""
        self._ask({"op": "throttle", "id": image.id, "rate": rate})

    def exoscale_settings(self) -> ExoscaleSettings:
        """Settings that point an :class:`ExoscaleClient` at the server's API."""
        return ExoscaleSettings(key=KEY, secret=SECRET, endpoint=self.endpoint)


async def fresh_url(settings: ExoscaleSettings, snapshot_id: str) -> str:
    """Ask the server's API for a fresh presigned URL of a snapshot, as the jobs do."""
    async with ExoscaleClient(settings) as client:
        snapshot = await client.get_snapshot(ZONE, snapshot_id)
    assert snapshot.export is not None
    return snapshot.export.presigned_url


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
