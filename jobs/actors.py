"""The Dramatiq actors of every job, one per step of its chain (:mod:`jobs.chains`): the
archive pipeline's (:mod:`jobs.steps`), backups', restores', scrubs' and Genesis restores'.

Importing this module configures the broker from ``SNAPARCHIVE_BROKER_URL``. Actors are
plain functions that run their step on the worker process's event loop (the AsyncIO
middleware's) and send the next step as a message, delayed when the step asks to wait:
polling an export never sleeps in a worker thread. Messages carry only the zone and the
snapshot id; credentials come from each worker's environment.

Transient errors are retried by Dramatiq with backoff, up to :data:`MAX_RETRIES`;
permanent ones, and transient ones on the last retry, end the job as failed. What leaves
an actor is a :class:`StepRetry` holding only :func:`~worker.errors.describe`'s words:
Dramatiq logs that exception and keeps its traceback in the retried message, and the
text of a foreign exception (aiohttp's, botocore's) can hold URLs and headers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import dramatiq
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread
from dramatiq.middleware import CurrentMessage, Middleware

from jobs.chains import CHAIN_OF, Chain
from jobs.context import Context
from jobs.steps import Next, until_store_answers
from worker import logs, metrics
from worker import settings as settings_module
from worker.broker import make_broker, safe_traceback
from worker.errors import SnaparchiveError, describe
from worker.jobstore import STORE_UNREACHABLE, RedisJobStore
from worker.md5state import resumable_available

logger = logging.getLogger(__name__)

MAX_RETRIES = 8
#: Polling steps are short; the transfer runs for one slice (SNAPARCHIVE_TRANSFER_SLICE).
SHORT_TIME_LIMIT = 5 * 60 * 1000
#: Milliseconds that stand for "no limit" (Dramatiq's time limit wants a number).
UNLIMITED = 30 * 24 * 3600 * 1000
_context: Context | None = None
#: Jobs one worker process runs at once (Dramatiq's ``--threads``), learnt at its boot.
_worker_threads = 1


def _loop_thread() -> EventLoopThread:
    """The event loop of Dramatiq's AsyncIO middleware (the broker always has it)."""
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("Dramatiq's AsyncIO middleware is not running")
    return thread


class StepRetry(dramatiq.Retry, SnaparchiveError):
    """A step failed for a moment; Dramatiq retries it with backoff (and logs nothing:
    :func:`_drive` has logged the failure in its own words, the only ones it carries)."""

    permanent = False


async def _get_context() -> Context:
    """The process's context, made on first use on the worker's event loop."""
    global _context
    if _context is None:
        settings = settings_module.load()
        _context = Context.create(
            settings, RedisJobStore.for_settings(settings), transfers=_worker_threads
        )
    return _context


class ContextLifecycle(Middleware):
    """Sets up the worker process's logging (``SNAPARCHIVE_LOG_FORMAT``, secrets masked),
    learns the worker's thread count at boot (the archive store's threads are sized for
    that many transfers), warns when the MD5 state cannot be saved, tells running transfers
    to checkpoint at shutdown, then closes the context."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # Dramatiq pointed stderr at its pipe to the main process, which writes the lines out.
        level = logging.getLogger().getEffectiveLevel()
        logs.setup(level, stream=sys.stderr, text_format=logs.WORKER_TEXT_FORMAT, replace=True)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        global _worker_threads
        _worker_threads = max(1, int(getattr(worker, "worker_threads", 1)))
        if not resumable_available():
            logger.warning(
                "libcrypto's MD5 is not usable here (missing, or a FIPS build): a transfer "
                "that resumes must hash its whole prefix again, and transfers run to their "
                "end in one message instead of in slices"
            )

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if _context is not None:
            _loop_thread().loop.call_soon_threadsafe(_context.shutdown.set)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        global _context
        if _context is not None:
            _loop_thread().run_coroutine(_context.close())
            _context = None


async def _launch(step: str, a: str, b: str) -> None:
    """Start another job's chain: a message for ``step``'s actor."""
    await asyncio.to_thread(ACTORS[step].send, a, b)


async def _count_end(
    ctx: Context, chain: Chain, zone: str, snapshot_id: str, started: float
) -> None:
    """Count a job (an archive, a restore) in the metrics if this step ended it (a stale
    message finds it ended before the step started)."""
    kind = chain.record_kind
    if kind is None:
        return
    try:
        record = await ctx.store.get(zone, snapshot_id, kind=kind)
    except STORE_UNREACHABLE:
        return
    if record is not None and not record.active and record.updated_at >= started:
        metrics.job_ended(kind, record)


async def _run_step(name: str, zone: str, snapshot_id: str, last_try: bool) -> Next | None:
    ctx = await _get_context()
    ctx.launch = _launch
    chain = CHAIN_OF[name]
    started = time.time()
    with logs.job_context(zone, snapshot_id, name):
        try:
            following = await chain.steps[name](ctx, zone, snapshot_id)
        except Exception as error:
            await until_store_answers(ctx)
            permanent = isinstance(error, SnaparchiveError) and error.permanent
            if permanent or last_try:
                await chain.fail(ctx, zone, snapshot_id, error)
                await _count_end(ctx, chain, zone, snapshot_id, started)
                return None
            raise
        if following is None:
            await _count_end(ctx, chain, zone, snapshot_id, started)
        else:
            # Its message may go to a broker that is this very Redis.
            await until_store_answers(ctx)
        return following


def _drive(name: str, zone: str, snapshot_id: str) -> None:
    with logs.job_context(zone, snapshot_id, name):
        _drive_step(name, zone, snapshot_id)


def _drive_step(name: str, zone: str, snapshot_id: str) -> None:
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    try:
        following = _loop_thread().run_coroutine(
            _run_step(name, zone, snapshot_id, last_try=retries >= MAX_RETRIES)
        )
        if following is not None:
            ACTORS[following.step].send_with_options(
                args=(zone, snapshot_id), delay=int(following.delay * 1000)
            )
    except Exception as error:
        reason = describe(error)
        logger.warning("%s %s/%s: %s (will retry)", name, zone, snapshot_id, reason)
        if not isinstance(error, SnaparchiveError):
            # A bug, most likely: where it happened, without the exception's text.
            logger.warning("%s", safe_traceback(error))
        raise StepRetry(f"{name} {zone}/{snapshot_id}: {reason}") from None


_settings = settings_module.load()
broker = make_broker(
    _settings.broker_url,
    ContextLifecycle(),
    *metrics.dramatiq_middleware(),
    heartbeat_timeout=_settings.heartbeat_timeout,
)
_options: dict[str, Any] = {
    "queue_name": _settings.queue,
    "max_retries": MAX_RETRIES,
    "min_backoff": 5_000,
    "max_backoff": 300_000,
}


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def start_export(zone: str, snapshot_id: str) -> None:
    """Adopt an existing archive or export, or start the export."""
    _drive("start_export", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def await_export(zone: str, snapshot_id: str) -> None:
    """Check the export once; re-enqueued with a delay while it is pending."""
    _drive("await_export", zone, snapshot_id)


# Without a resumable MD5 a transfer cannot hand over at the end of its slice (its successor
# would hash the whole prefix again), so it runs to its end in one message.
_TRANSFER_LIMIT = (_settings.transfer_slice + 600) * 1000 if resumable_available() else UNLIMITED


@dramatiq.actor(time_limit=_TRANSFER_LIMIT, **_options)
def transfer_snapshot(zone: str, snapshot_id: str) -> None:
    """Stream, verify and archive the export for one slice, resuming from the checkpoint."""
    _drive("transfer_snapshot", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def backup_snapshot(run_id: str, instance_id: str) -> None:
    """Ask for a snapshot of one instance of a backup run."""
    _drive("backup_snapshot", run_id, instance_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def backup_await_snapshot(run_id: str, instance_id: str) -> None:
    """Check the snapshot once; then start its archive job."""
    _drive("backup_await_snapshot", run_id, instance_id)


# Rotation and retention read every manifest of the zone: more than a polling step.
@dramatiq.actor(time_limit=SHORT_TIME_LIMIT * 6, **_options)
def backup_await_archive(run_id: str, instance_id: str) -> None:
    """Check the archive job once; then rotate snapshots and apply retention."""
    _drive("backup_await_archive", run_id, instance_id)


# -- restore jobs (jobs.restore_steps): each step is short, the join one slice at a time ------


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def restore_check(zone: str, snapshot_id: str) -> None:
    """Check the archive a restore reads."""
    _drive("restore_check", zone, snapshot_id)


@dramatiq.actor(time_limit=(_settings.transfer_slice + 600) * 1000, **_options)
def restore_join(zone: str, snapshot_id: str) -> None:
    """Join a segmented archive server-side for one slice."""
    _drive("restore_join", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def restore_register(zone: str, snapshot_id: str) -> None:
    """Register the template from a presigned URL of the image."""
    _drive("restore_register", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def restore_await(zone: str, snapshot_id: str) -> None:
    """Check the registration once; re-enqueued with a delay while it is pending."""
    _drive("restore_await", zone, snapshot_id)


# A scrub reads a whole archive in one message: hours for a big one.
@dramatiq.actor(time_limit=UNLIMITED, **_options)
def verify_archive(zone: str, snapshot_id: str) -> None:
    """Read one archive back and record whether it is still good."""
    _drive("verify_archive", zone, snapshot_id)


# -- Genesis Cloud restores (jobs.genesis_steps): the conversion one slice at a time ---------


@dramatiq.actor(time_limit=_TRANSFER_LIMIT, **_options)
def genesis_convert(zone: str, snapshot_id: str) -> None:
    """Convert the archive to raw+zstd for one slice, resuming from the checkpoint."""
    _drive("genesis_convert", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def genesis_create(zone: str, snapshot_id: str) -> None:
    """Ask Genesis Cloud for the snapshot, from a presigned URL of the raw image."""
    _drive("genesis_create", zone, snapshot_id)


@dramatiq.actor(time_limit=SHORT_TIME_LIMIT, **_options)
def genesis_await(zone: str, snapshot_id: str) -> None:
    """Look at the Genesis Cloud snapshot once; re-enqueued with a delay while it is made."""
    _drive("genesis_await", zone, snapshot_id)


ACTORS: dict[str, dramatiq.Actor[[str, str], None]] = {
    "start_export": start_export,
    "await_export": await_export,
    "transfer_snapshot": transfer_snapshot,
    "backup_snapshot": backup_snapshot,
    "backup_await_snapshot": backup_await_snapshot,
    "backup_await_archive": backup_await_archive,
    "restore_check": restore_check,
    "restore_join": restore_join,
    "restore_register": restore_register,
    "restore_await": restore_await,
    "verify_archive": verify_archive,
    "genesis_convert": genesis_convert,
    "genesis_create": genesis_create,
    "genesis_await": genesis_await,
}
