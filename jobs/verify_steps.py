"""The scrub of one archive as a job: ``verify_archive``, one message per archive.

The scheduler launches one for each archive a policy's ``verify`` slot selects
(``verify_subset``). It reads the whole archive back (:func:`worker.scrub.verify`), so a big
archive keeps its message for as long as the read takes.
"""

from __future__ import annotations

import logging

from jobs.context import Context
from jobs.steps import Next, StepFunction
from worker.catalog import PROVIDER, ArchiveEntry
from worker.errors import describe
from worker.scrub import verify

logger = logging.getLogger(__name__)


async def verify_archive(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Read the archive of ``zone``/``snapshot_id`` back and record what it found."""
    manifest = await ctx.archive.find_archive(PROVIDER, zone, snapshot_id)
    if manifest is None:
        logger.info("%s/%s: no archive to verify any more", zone, snapshot_id)
        return None
    key = ctx.archive.manifest_key(PROVIDER, zone, snapshot_id)
    await verify(ctx.archive, ArchiveEntry(key, manifest))
    return None


async def fail(ctx: Context, zone: str, snapshot_id: str, error: BaseException) -> None:
    """The store could not be read, after every retry: no verdict, said loudly."""
    logger.error("verification of %s/%s did not run: %s", zone, snapshot_id, describe(error))


STEPS: dict[str, StepFunction] = {"verify_archive": verify_archive}
