"""The :class:`Simulator`: a simulated Exoscale account served over HTTP.

The server runs an aiohttp application on its own event loop in a background thread
(:mod:`.serving`), so a test (or the ``simulate`` command) keeps its thread; every method of
:class:`Simulator` may be called from any thread while it runs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from worker.settings import ExoscaleSettings
from worker.simulator.api import ExoscaleApi
from worker.simulator.control import Control
from worker.simulator.disk import Image
from worker.simulator.download import Downloads
from worker.simulator.faults import Faults
from worker.simulator.fetch import TemplateFetcher
from worker.simulator.qcow2image import ImageOptions
from worker.simulator.serving import ServerThread
from worker.simulator.state import SimState

#: Default seconds an export (or any operation) stays pending.
EXPORT_SECONDS = 2.0
#: Default lifetime of presigned URLs, in seconds.
URL_TTL = 3600.0


class Simulator:
    """A simulated Exoscale account: API v2 for every zone, and the exported files.

    Parameters:
      key: The API key clients sign with.
      secret: Its secret.
      seed: Seeds disk contents and derived ids (default 0); the same seed, snapshot id and
        size always give the same file.
      export_seconds: How long operations stay pending at least (default 2 s; 0 finishes
        them as soon as the export's MD5 is computed).
      url_ttl: Lifetime of presigned URLs in seconds (default 3600; faults may override it).
      clock: Returns the current UNIX time (default ``time.time``); tests pass their own to
        expire URLs and signatures without waiting.
      snapshot_quota: The organisation's snapshot limit (default -1: unlimited); at the limit
        create-snapshot is refused as Exoscale refuses it.
      image_format: ``raw`` (default: files of exactly the size asked for) or ``qcow2`` (valid
        qcow2 images of the snapshot's size, as Exoscale exports; ``snaparchive simulate``'s
        default); see :class:`~worker.simulator.qcow2image.ImageOptions`.
      cluster_size: qcow2 cluster size (default 64 KiB).
      compressed: qcow2 images store their compressible clusters deflated (default ``False``).
    """

    def __init__(
        self,
        *,
        key: str,
        secret: str,
        seed: int = 0,
        export_seconds: float = EXPORT_SECONDS,
        url_ttl: float = URL_TTL,
        clock: Callable[[], float] = time.time,
        snapshot_quota: int = -1,
        image_format: str = "raw",
        cluster_size: int = 1 << 16,
        compressed: bool = False,
    ) -> None:
        if not key or not secret:
            raise ValueError("the simulator needs an API key and a secret")
        self.key = key
        self.secret = secret
        self.seed = seed
        images = ImageOptions(image_format, cluster_size, compressed)
        self._state = SimState(seed, export_seconds, url_ttl, clock, snapshot_quota, images)
        self._server: ServerThread | None = None
        self._authority: str | None = None

    def __repr__(self) -> str:
        return f"<Simulator key={self.key} secret=***masked*** url={self._authority}>"

    def add_snapshot(
        self,
        snapshot_id: str,
        image_size: int,
        zone: str = "ch-gva-2",
        state: str = "ready",
        name: str | None = None,
        size_gib: int | None = None,
        instance_id: str | None = None,
        image_format: str | None = None,
    ) -> dict[str, Any]:
        """Add a snapshot and return its API body, as get-snapshot answers it.

        An exported snapshot's body has a presigned URL only while the simulator runs.

        Parameters:
          snapshot_id: A UUID.
          image_size: Bytes of the exported file (raw), or of data written on the disk (qcow2:
            the file holds them, less zero clusters and holes, plus its metadata).
          zone: One of ``worker.settings.EXOSCALE_ZONES`` (default ``ch-gva-2``).
          state: ``ready`` (default), ``exported`` (the MD5 is computed now, in this thread),
            ``snapshotting`` or ``error``.
          name: Snapshot name (default: derived from the instance's).
          size_gib: Reported size in GiB, 10..51200 (default ``max(10, ceil(image_size/GiB))``).
          instance_id: The instance it is a snapshot of (default: one derived from the id).
          image_format: ``raw`` or ``qcow2`` (default: the simulator's).

        Raises:
          ValueError: On a malformed id, a bad size, zone or state, or a duplicate id.
        """
        record = self._state.add_snapshot(
            snapshot_id, image_size, zone, state, name, size_gib, instance_id, image_format
        )
        body = self._state.get_snapshot(record.zone, record.id, self._authority or "")
        if self._authority is None:
            body.get("export", {}).pop("presigned-url", None)
        return body

    def add_instance(
        self,
        instance_id: str,
        zone: str = "ch-gva-2",
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        disk_size: int = 10,
        template_id: str | None = None,
        boot_mode: str | None = None,
        default_user: str | None = None,
        ssh_key_enabled: bool | None = None,
        password_enabled: bool | None = None,
    ) -> dict[str, Any]:
        """Add a running instance and return its API body, as get-instance answers it.

        Its template is the zone's public Ubuntu template (``uefi``, user ``ubuntu``), or,
        when any of the four template settings is given, a private template of its own with
        them (the rest as the public one; ``boot_mode`` defaults to ``legacy``, the API's
        default), or an existing template of the zone by ``template_id``. get-template shows
        it: what an archive records to restore the instance later.

        Parameters:
          instance_id: A UUID.
          zone: One of ``worker.settings.EXOSCALE_ZONES`` (default ``ch-gva-2``).
          name: Instance name (default ``vm-`` and the id's first 8 characters).
          labels: Its labels (default none); keys without spaces or ``=``.
          disk_size: Disk size in GiB, 10..51200 (default 10): the size of its snapshots.
          template_id: Build it from this template of the zone.
          boot_mode: ``legacy`` or ``uefi``.
          default_user: The template's default user.
          ssh_key_enabled, password_enabled: The template's login flags.

        Raises:
          ValueError: On a malformed id, name, label or size, an unknown zone or template, a
            duplicate id, or template settings together with ``template_id``.
        """
        record = self._state.add_instance(
            instance_id,
            zone,
            name=name,
            labels=labels,
            disk_size=disk_size,
            template_id=template_id,
            boot_mode=boot_mode,
            default_user=default_user,
            ssh_key_enabled=ssh_key_enabled,
            password_enabled=password_enabled,
        )
        return self._state.get_instance(record.zone, record.id)

    def set_snapshot_quota(self, limit: int) -> None:
        """Set the organisation's snapshot limit (-1: unlimited). ValueError for a bad one."""
        self._state.set_snapshot_quota(limit)

    def wait_for_fetches(self, timeout: float = 60.0) -> None:
        """Wait until every template URL being read by register-template has been read.

        Registrations then end as soon as their delay has passed (tests that poll once
        call this first, like :meth:`image_md5` for exports).

        Raises:
          TimeoutError: When some are still being read after ``timeout`` seconds.
        """
        if not self._state.wait_for_fetches(timeout):
            raise TimeoutError(f"template URLs still being read after {timeout:g}s")

    def set_faults(self, faults: Faults | None, snapshot_id: str | None = None) -> None:
        """Set the faults (None clears them) globally or, with ``snapshot_id``, for one snapshot.

        A snapshot's own faults replace the global ones for it; setting faults resets their
        counters. See :mod:`worker.simulator.faults` for what each fault does.
        """
        self._state.set_faults(faults, snapshot_id)

    @contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[Simulator]:
        """Serve over HTTP for the duration of the ``with`` block.

        Parameters:
          host: Interface to bind (default ``127.0.0.1``).
          port: Port to bind (default 0: a free one; see :attr:`endpoint`).

        Raises:
          OSError: When the address cannot be bound.
          RuntimeError: When already running.
        """
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        app = web.Application()
        ExoscaleApi(self._state, {self.key: self.secret}).add_routes(app)
        Downloads(self._state).add_routes(app)
        Control(self._state).add_routes(app)
        server = ServerThread(app, host, port)
        fetcher = TemplateFetcher(server.loop)

        async def stop_fetches(app: web.Application) -> None:
            await fetcher.close()  # registrations in flight end as interrupted

        app.on_shutdown.append(stop_fetches)
        self._state.fetcher = fetcher
        try:
            server.start()
        except BaseException:
            self._state.fetcher = None
            raise
        self._server = server
        reachable = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        if ":" in reachable:
            reachable = f"[{reachable}]"
        self._authority = f"http://{reachable}:{server.port}"
        try:
            yield self
        finally:
            server.stop()
            self._state.fetcher = None
            self._server = None
            self._authority = None

    @property
    def url(self) -> str:
        """Scheme and authority of the running server, like ``http://127.0.0.1:41234``."""
        if self._authority is None:
            raise RuntimeError("the simulator is not running")
        return self._authority

    @property
    def endpoint(self) -> str:
        """The API endpoint, ``http://HOST:PORT/{zone}/v2`` with a literal ``{zone}``."""
        return f"{self.url}/{{zone}}/v2"

    @property
    def host(self) -> str:
        """The host presigned URLs point at (for ``SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS``)."""
        return self.url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")

    def settings(self) -> ExoscaleSettings:
        """Return Exoscale settings that point a client at this simulator."""
        return ExoscaleSettings(key=self.key, secret=self.secret, endpoint=self.endpoint)

    def env(self) -> dict[str, str]:
        """Return the environment variables that point snaparchive at this simulator."""
        return {
            "EXOSCALE_API_ENDPOINT": self.endpoint,
            "EXOSCALE_API_KEY": self.key,
            "EXOSCALE_API_SECRET": self.secret,
            "SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS": self.host,
        }

    def image(self, snapshot_id: str) -> Image:
        """Return a snapshot's image (its ``format``, ``size``, bytes). KeyError if unknown."""
        return self._state.snapshot_record(snapshot_id).image

    def image_md5(self, snapshot_id: str) -> str:
        """Return the MD5 hex of a snapshot's file (the true one, whatever the faults).

        Computes it in this thread if not yet known. Raises KeyError for an unknown id.
        """
        return self._state.snapshot_record(snapshot_id).image.compute_md5()

    def open_image(self, snapshot_id: str) -> io.BufferedReader:
        """Return a seekable binary file of a snapshot's file bytes (uncorrupted).

        Raises KeyError for an unknown id.
        """
        return self._state.snapshot_record(snapshot_id).image.open()

    def bytes_served(self, snapshot_id: str) -> int:
        """Return the body bytes of presigned downloads of a snapshot written so far.

        Counted as handed to the connection; a reset may lose some of them on the way.
        Raises KeyError for an unknown id.
        """
        record = self._state.snapshot_record(snapshot_id)
        with self._state.lock:
            return record.served

    def downloads_sending(self, snapshot_id: str) -> int:
        """Return how many download responses of a snapshot are sending their body now.

        A response counts until its last byte is written or the server notices that the
        client went away: once it is 0, :meth:`bytes_served` no longer moves for them.
        Raises KeyError for an unknown id.
        """
        record = self._state.snapshot_record(snapshot_id)
        with self._state.lock:
            return record.sending
