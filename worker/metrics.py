"""Prometheus metrics: ours and Dramatiq's, served by one exporter per command.

``snaparchive worker --metrics-port P`` (or ``SNAPARCHIVE_METRICS_PORT``) serves, at
``http://HOST:P/metrics``, Dramatiq's metrics (its ``Prometheus`` middleware: messages, errors,
retries, durations per actor) and these:

- ``snaparchive_archive_bytes_total``: bytes of images archived (verified and committed);
- ``snaparchive_jobs_total{kind,result}``: jobs ended, by kind (``archive``, ``restore``,
  ``genesis``) and result (``done``, ``failed``, ``cancelled``);
- ``snaparchive_job_duration_seconds{kind}``: from a job's claim to its end, in buckets from a
  minute to four days;
- ``snaparchive_verify_failures_total``: verifications that failed (an MD5 that differs, a store
  corrupting parts);
- ``snaparchive_reread_bytes_total``: bytes a resumed transfer downloaded again (read by an
  earlier run already: the stretch between the checkpoint and a crash, or the whole prefix when
  the MD5 state could not be restored);
- ``snaparchive_last_verified_archive_timestamp_seconds{zone,instance}``: the recovery point,
  when the snapshot of the newest verified archive of an instance was taken (UNIX time).

A worker runs several processes. Each writes its samples to files in one directory
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``; a fresh one per
``snaparchive worker`` unless that variable names one) and a single exporter, a process that
Dramatiq forks once per ``snaparchive worker`` (not one per worker process), serves their sum:
the processes never compete for the port. Two ``snaparchive worker`` commands on one host need
two ports; the second refuses to start on a port in use (exit status 2) rather than run blind.
Single-process commands (the scheduler) call :func:`serve`.

prometheus_client decides at import whether it writes files, so it is imported only when a
metric is first used, after the command has set ``PROMETHEUS_MULTIPROC_DIR``. Recording a
metric never raises: a job does not fail for its metrics.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.jobstore.record import JobRecord

logger = logging.getLogger(__name__)

PORT_VARIABLE = "SNAPARCHIVE_METRICS_PORT"
#: prometheus_client's directory of per-process sample files.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Where Dramatiq's Prometheus middleware keeps its files (read when it is imported).
DRAMATIQ_DB_VARIABLE = "dramatiq_prom_db"
#: The address exporters listen on.
ADDRESS = "0.0.0.0"
#: Job durations: jobs of a minute (an adopted archive) to days (50 TiB).
DURATION_BUCKETS = (
    *(60.0, 300.0, 900.0, 1800.0),
    *(3600.0 * hours for hours in (1, 2, 4, 8, 16, 24, 48, 96)),
    float("inf"),
)
#: The results of ``snaparchive_jobs_total``, whose series exist (at 0) from the start.
RESULTS = ("done", "failed", "cancelled")
#: The kinds of job counted (:data:`worker.jobstore.KINDS`), whose series exist from the start.
KINDS = ("archive", "restore", "genesis")


@dataclass(frozen=True)
class _Metrics:
    archive_bytes: Any
    jobs: Any
    duration: Any
    verify_failures: Any
    reread_bytes: Any
    last_verified: Any


@functools.cache
def _metrics() -> _Metrics:
    """Our collectors, made on first use (see the module docstring for why that late)."""
    from prometheus_client import Counter, Gauge, Histogram

    made = _Metrics(
        archive_bytes=Counter(
            "snaparchive_archive_bytes_total", "Bytes of images archived (verified, committed)."
        ),
        jobs=Counter(
            "snaparchive_jobs_total", "Jobs ended, by kind and result.", ["kind", "result"]
        ),
        duration=Histogram(
            "snaparchive_job_duration_seconds",
            "Seconds from a job's claim to its end.",
            ["kind"],
            buckets=DURATION_BUCKETS,
        ),
        verify_failures=Counter(
            "snaparchive_verify_failures_total",
            "Verifications that failed: bad data (an MD5 mismatch, a store corrupting parts).",
        ),
        reread_bytes=Counter(
            "snaparchive_reread_bytes_total",
            "Bytes a resumed transfer downloaded again (read by an earlier run already).",
        ),
        last_verified=Gauge(
            "snaparchive_last_verified_archive_timestamp_seconds",
            "When the snapshot of the newest verified archive of an instance was taken.",
            ["zone", "instance"],
            # Across processes (and after one ended): the newest.
            multiprocess_mode="max",
        ),
    )
    for kind in KINDS:
        made.duration.labels(kind)
        for result in RESULTS:
            made.jobs.labels(kind, result)
    return made


def _safely(record: Callable[..., None]) -> Callable[..., None]:
    """A metric that cannot be recorded is logged once, never raised into a job."""
    failed = False

    @functools.wraps(record)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        nonlocal failed
        try:
            record(*args, **kwargs)
        except Exception as error:
            if not failed:
                failed = True
                logger.warning("metrics: cannot record %s: %r", record.__name__, error)

    return wrapper


#: The newest recovery point this process has set, per (zone, instance): the gauge keeps it.
_newest: dict[tuple[str, str], float] = {}


@_safely
def job_ended(kind: str, record: JobRecord) -> None:
    """Count a job that ended (its record in a terminal step) and how long it took."""
    metrics = _metrics()
    metrics.jobs.labels(kind, str(record.step)).inc()
    if record.created_at:
        metrics.duration.labels(kind).observe(max(0.0, record.updated_at - record.created_at))
    if record.error_kind == "verification":
        metrics.verify_failures.inc()


@_safely
def verify_failed() -> None:
    """Count a verification that found bad data (``verify``, a job's MD5 check)."""
    _metrics().verify_failures.inc()


@_safely
def archive_verified(zone: str, instance_id: str | None, snapshot_created_at: str | None) -> None:
    """Move the recovery point of ``zone``/``instance_id`` to this archive's snapshot (its
    ``created_at``, ISO 8601; now when unknown), unless a newer one is known."""
    point = _timestamp(snapshot_created_at)
    key = (zone, instance_id or "unknown")
    if point <= _newest.get(key, float("-inf")):
        return
    _newest[key] = point
    _metrics().last_verified.labels(*key).set(point)


@_safely
def archived(
    zone: str, instance_id: str | None, size: int, snapshot_created_at: str | None
) -> None:
    """An archive of ``size`` bytes was verified and committed."""
    _metrics().archive_bytes.inc(size)
    archive_verified(zone, instance_id, snapshot_created_at)


@_safely
def reread(size: int) -> None:
    """``size`` bytes were downloaded again."""
    _metrics().reread_bytes.inc(size)


def _timestamp(iso: str | None) -> float:
    if iso:
        try:
            moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            return moment.timestamp()
    return datetime.datetime.now(datetime.UTC).timestamp()


class RereadMeter:
    """A transfer's ``on_progress``: counts the bytes it downloads again, then passes on.

    Bytes below ``furthest`` (how far earlier runs of the job had downloaded, as its record's
    progress says) are read again. The run starts at ``resumed_from`` (the saved checkpoint's
    offset) or, when the checkpoint could not be continued (no MD5 state, the store disagreed),
    at 0; the first progress report tells which, since it comes within the first part.

    Parameters:
      on_progress: Called with every report, after counting.
      resumed_from: The offset of the checkpoint the run was given (0 if none).
      furthest: The job's ``bytes_done`` before the run.
    """

    def __init__(
        self, on_progress: Callable[[int, int], None], resumed_from: int, furthest: int
    ) -> None:
        self.on_progress = on_progress
        self.resumed_from = resumed_from
        self.furthest = furthest
        self._last: int | None = None

    def __call__(self, offset: int, total: int) -> None:
        if self._last is None:
            self._last = self.resumed_from if offset > self.resumed_from else 0
        again = min(offset, self.furthest) - min(self._last, self.furthest)
        if again > 0:
            reread(again)
        self._last = offset
        self.on_progress(offset, total)


# -- exporters -----------------------------------------------------------------------------


def check_port(port: int, address: str = ADDRESS) -> None:
    """Raise :class:`ConfigError` when ``port`` cannot be listened on (another exporter, or
    anything else, has it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the exporter's server does: a port left in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise ConfigError(
                f"{PORT_VARIABLE}/--metrics-port: cannot listen on port {port}: "
                f"{error.strerror or error} (each snaparchive worker on a host needs its own port)"
            ) from None


def multiprocess_directory() -> tuple[Path, bool]:
    """Make the directory the processes of one command write their samples to, and point
    ``PROMETHEUS_MULTIPROC_DIR`` (and Dramatiq's middleware) at it; call it before anything
    imports prometheus_client.

    Returns:
      The directory, and whether it is ours to remove at the end (not when
      ``PROMETHEUS_MULTIPROC_DIR`` named it: then it is emptied of samples, as
      prometheus_client asks before a start).
    """
    given = os.environ.get(MULTIPROC_VARIABLE)
    if given:
        directory, owned = Path(given), False
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory, owned = Path(tempfile.mkdtemp(prefix="snaparchive-metrics-")), True
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    os.environ[DRAMATIQ_DB_VARIABLE] = str(directory)
    return directory, owned


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _registry() -> Any:
    """The collectors an exporter serves: the files of every process in multiprocess mode,
    else this process's own."""
    import prometheus_client

    if not os.environ.get(MULTIPROC_VARIABLE):
        return prometheus_client.REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = prometheus_client.CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def run_exporter() -> int:
    """Serve the worker's metrics on ``SNAPARCHIVE_METRICS_PORT`` until stopped.

    Dramatiq's fork function (``--fork-function worker.metrics:run_exporter``): Dramatiq starts
    it once per ``snaparchive worker``, after the worker processes, and stops it with them.
    """
    from prometheus_client import start_http_server

    from worker.settings import load

    port = load().metrics_port
    if port is None:
        logger.error("metrics: %s is not set; no exporter", PORT_VARIABLE)
        return 1
    try:
        _, thread = start_http_server(port, ADDRESS, registry=_registry())
    except OSError as error:
        logger.error("metrics: cannot listen on port %d: %s", port, error.strerror or error)
        return 1
    logger.info("metrics: serving on port %d", port)
    thread.join()  # until SIGTERM: Dramatiq's handler ends the process
    return 0


def serve(port: int, address: str = ADDRESS) -> Callable[[], None]:
    """Serve this process's metrics (its own, or every process's in multiprocess mode) on
    ``port`` from a thread, as a single-process command (``snaparchive scheduler``) does.

    Returns:
      A function that stops the exporter.

    Raises:
      ConfigError: The port cannot be listened on.
    """
    from prometheus_client import start_http_server

    check_port(port, address)
    _metrics()  # our series exist from the first scrape
    server, _ = start_http_server(port, address, registry=_registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def dramatiq_middleware() -> list[Any]:
    """The middleware a worker process adds when its command serves metrics: Dramatiq's
    ``Prometheus`` (its metrics, without its own exporter: :func:`run_exporter` serves them
    with ours). Empty otherwise, and for a command that only sends messages."""
    if not (os.environ.get(MULTIPROC_VARIABLE) and os.environ.get(PORT_VARIABLE)):
        return []
    from dramatiq.middleware.prometheus import Prometheus

    class DramatiqMetrics(Prometheus):
        """Dramatiq's metrics, served by :func:`run_exporter` (no exporter of its own on
        ``dramatiq_prom_port``)."""

        @property
        def forks(self) -> list[Callable[[], int]]:
            return []

    _metrics()  # our series exist (at 0) from the first scrape
    return [DramatiqMetrics()]
