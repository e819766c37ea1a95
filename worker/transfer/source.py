"""What a transfer reads: an exported snapshot and its presigned URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from worker.manifest import ArchiveId, SourceTemplate


@dataclass(frozen=True)
class ExportSource:
    """What is being archived. No credentials inside except the URL itself.

    Parameters:
      provider, zone, snapshot_id, snapshot_name, instance_id, created_at: The snapshot.
      md5: The export's published md5sum (hex).
      url: The current presigned URL: a credential, never logged, stored or put in metadata.
      refresh_url: Coroutine function returning a fresh presigned URL.
      policy: The backup policy that took the snapshot, if one did (default ``None``).
      template: The source instance's template settings, when known (default ``None``).
    """

    provider: str
    zone: str
    snapshot_id: str
    snapshot_name: str
    instance_id: str | None
    created_at: str | None
    md5: str
    url: str = field(repr=False)
    refresh_url: Callable[[], Awaitable[str]] = field(repr=False)
    policy: str | None = None
    template: SourceTemplate | None = None

    @property
    def archive(self) -> ArchiveId:
        """The archive this source goes into."""
        return ArchiveId(self.provider, self.zone, self.snapshot_id)

    @property
    def expected_md5(self) -> str:
        """The published MD5, normalised (lowercase, no spaces)."""
        return self.md5.strip().lower()
