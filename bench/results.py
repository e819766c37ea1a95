"""What a benchmark run found: measurements, memory runs, the resume figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.measure import median
from bench.recovery import Recovery

if TYPE_CHECKING:
    from bench.restore import RestoreResults


@dataclass
class Run:
    """One run of one measurement.

    Parameters:
      seconds: Wall time of the command(s), spawn to exit.
      cpu: CPU seconds of the command's own processes.
      max_rss: Peak RSS of its largest process, in bytes.
      servers_cpu: CPU seconds the image server and the S3 endpoint spent meanwhile.
      transfer: The pipeline's ``archive_export`` call alone, in seconds (pipeline only).
      copy: rclone's copy alone, in seconds (before its ``md5sum``).
      error: Why the run does not count (a failure or a wrong MD5); ``None`` if it does.
      rss_exact: Whether ``max_rss`` came from GNU time (see :mod:`bench.measure`).
      others_cpu: CPU seconds the rest of the machine spent meanwhile (other load).
    """

    seconds: float
    cpu: float
    max_rss: int
    servers_cpu: dict[str, float] = field(default_factory=dict)
    transfer: float | None = None
    copy: float | None = None
    error: str | None = None
    rss_exact: bool = True
    others_cpu: float = 0.0


@dataclass
class Measurement:
    """Several runs of one command (or pair of commands) over the same image.

    Parameters:
      key: Short identifier.
      label: What is measured, for the report.
      store: Where the bytes go: ``-`` (nowhere), ``null sink`` or ``moto``.
      commands: The command lines, as run.
      size: Bytes of the image.
      skipped: Why it was not measured, if it was not.
    """

    key: str
    label: str
    store: str
    commands: list[str]
    size: int
    runs: list[Run] = field(default_factory=list)
    skipped: str | None = None

    @property
    def good(self) -> list[Run]:
        """The runs that count (no error)."""
        return [run for run in self.runs if run.error is None]

    @property
    def measured(self) -> bool:
        return bool(self.good)

    def rate(self, what: str = "seconds") -> float:
        """Median MB/s (10^6 bytes per second) over the good runs, by ``what`` time."""
        rates = [self.size / getattr(run, what) / 1e6 for run in self.good if getattr(run, what)]
        return median(rates)

    def median(self, what: str) -> float:
        """Median of an attribute over the good runs."""
        return median([float(getattr(run, what)) for run in self.good])

    def server_cpu(self, name: str) -> float:
        """Median CPU seconds server ``name`` spent per good run."""
        return median([run.servers_cpu.get(name, 0.0) for run in self.good])

    @property
    def peak_rss(self) -> int:
        """The largest peak RSS over the good runs, in bytes."""
        return max((run.max_rss for run in self.good), default=0)


@dataclass
class MemoryRun:
    """The pipeline into the null sink for one image size and memory limit.

    Parameters:
      size: Image bytes.
      memory_limit: ``SNAPARCHIVE_MEMORY_LIMIT`` in bytes.
      part_size: The part size the engine derived from it.
      buffers: Part buffers it may hold at once.
      measurement: The runs.
    """

    size: int
    memory_limit: int
    part_size: int
    buffers: int
    measurement: Measurement


@dataclass
class Resume:
    """Issue 5's figure: a transfer killed at about half, resumed in a new process.

    Parameters:
      size: Image bytes.
      part_size: Part size.
      served_at_kill: Bytes the image server had sent when the first process was killed.
      checkpoint_offset: The offset of the last checkpoint saved before the kill.
      stored_at_kill: Part numbers the store held at the kill (ListParts).
      served_resume: Bytes the server sent to the resumed process.
      resumed_from: The offset the resumed process started from (its report).
      first_started, first_done: Part numbers whose UploadPart the first process started
        and saw answered.
      second_sent: Part numbers the resumed process uploaded, with their sizes.
      part_sizes: Size of each part number.
      first_seconds, second_seconds: Wall times of both processes.
      error: What went wrong, if something did.
    """

    size: int
    part_size: int
    served_at_kill: int = 0
    checkpoint_offset: int = 0
    stored_at_kill: set[int] = field(default_factory=set)
    served_resume: int = 0
    resumed_from: int | None = None
    first_started: set[int] = field(default_factory=set)
    first_done: set[int] = field(default_factory=set)
    second_sent: set[int] = field(default_factory=set)
    part_sizes: dict[int, int] = field(default_factory=dict)
    first_seconds: float = 0.0
    second_seconds: float = 0.0
    error: str | None = None

    @property
    def redownloaded(self) -> int:
        """Bytes served twice: after the kill, beyond the remainder (= served in all - size)."""
        return self.served_resume - (self.size - self.served_at_kill)

    @property
    def reuploaded_parts(self) -> list[int]:
        """Parts the first process had started uploading that the resumed one sent again."""
        return sorted(self.second_sent & self.first_started)

    @property
    def reuploaded(self) -> int:
        """Bytes of :attr:`reuploaded_parts`."""
        return sum(self.part_sizes[number] for number in self.reuploaded_parts)

    @property
    def kept_beyond_checkpoint(self) -> list[int]:
        """Parts stored past the checkpoint that the resume adopted instead of re-sending."""
        done_before = self.checkpoint_offset // self.part_size
        return sorted(
            n for n in self.stored_at_kill if n > done_before and n not in self.second_sent
        )


@dataclass
class Results:
    """Everything one benchmark run measured, for the report."""

    machine: dict[str, str]
    tools: dict[str, str]
    options: dict[str, str]
    size: int
    runs: int
    part_size: int
    memory_limit: int
    measurements: dict[str, Measurement] = field(default_factory=dict)
    memory: list[MemoryRun] = field(default_factory=list)
    resume: Resume | None = None
    recovery: Recovery | None = None
    restore: RestoreResults | None = None
    duration: float = 0.0
    waited: float = 0.0
