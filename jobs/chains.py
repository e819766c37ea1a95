"""The chains of steps a job runs, for the drivers (:mod:`jobs.actors`, :mod:`jobs.local`).

A chain is where a job starts, its step functions by name, and how it ends when a step
fails for good. Every step takes the context and the job's two words: a zone and a
snapshot id for an archive or a restore (the archive's source), a run id and an instance id
for a backup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from jobs import backup_steps, genesis_steps, restore_steps, steps, verify_steps
from jobs.context import Context
from jobs.steps import StepFunction
from worker import jobstore

Fail = Callable[[Context, str, str, BaseException], Awaitable[None]]


@dataclass(frozen=True)
class Chain:
    """A job's steps: the ``first`` one, all of them by name, and ``fail``, which ends the
    job with a one-line reason when a step fails for good; ``record_kind`` is the kind of
    the job record its steps keep (:data:`worker.jobstore.KINDS`), ``None`` for a chain
    without one (a backup run's instance, a scrub)."""

    name: str
    first: str
    steps: dict[str, StepFunction]
    fail: Fail
    record_kind: str | None = None


ARCHIVE = Chain("archive", "start_export", steps.STEPS, steps.fail, jobstore.ARCHIVE)
BACKUP = Chain("backup", "backup_snapshot", backup_steps.STEPS, backup_steps.fail)
RESTORE = Chain(
    "restore", restore_steps.FIRST, restore_steps.STEPS, restore_steps.fail, jobstore.RESTORE
)
VERIFY = Chain("verify", "verify_archive", verify_steps.STEPS, verify_steps.fail)
GENESIS = Chain(
    "genesis", "genesis_convert", genesis_steps.STEPS, genesis_steps.fail, jobstore.GENESIS
)
CHAINS = (ARCHIVE, BACKUP, RESTORE, VERIFY, GENESIS)
#: The chain of every step, by the step's name.
CHAIN_OF: dict[str, Chain] = {name: chain for chain in CHAINS for name in chain.steps}
