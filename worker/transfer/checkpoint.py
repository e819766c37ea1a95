"""Where a transfer stands at a part boundary: the :class:`Checkpoint` and its JSON format.

A checkpoint is what a resume cannot rebuild from the store: the part layout, the offset up
to which every part is stored and hashed, the MD5 chain's state there, and per segment its
multipart upload, how many parts it holds in order and a digest of their ETags (checked
against ListParts). Once the commit begins, each segment also records its object's ETag.
It stays a few hundred bytes per segment, for 50 TiB too.

JSON (:meth:`Checkpoint.to_dict`, format 1)::

    {"format": 1, "plan": {...}, "md5": "<published md5>", "offset": 52428800,
     "md5_state": "<base64>" | null, "validator": "<ETag or Last-Modified>" | null,
     "segments": {"0": {"key": "...", "upload_id": "...", "parts": 10,
                        "etags_md5": "<hex>", "state": "uploading",
                        "object_etag": null}}}

``state`` and ``object_etag`` came with resumable commits; a checkpoint without them is read
as ``uploading``. ``source_state`` (absent or ``null`` for an archive) is what an open-ended
source (:class:`~worker.transfer.source.OpenEnded`) needs to go on at ``offset``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.errors import TransferError
from worker.parts import PartPlan

CHECKPOINT_FORMAT = 1

#: States of a segment's upload: parts going up; CompleteMultipartUpload sent (it may have
#: succeeded without our knowing); the object exists.
UPLOADING, COMPLETING, COMPLETED = "uploading", "completing", "completed"
_STATES = (UPLOADING, COMPLETING, COMPLETED)


def etags_digest(etags: list[str]) -> str:
    """Return the hex MD5 of ``etags`` one per line: a fixed-size fingerprint of a part list."""
    digest = hashlib.md5()
    for etag in etags:
        digest.update(f"{etag}\n".encode())
    return digest.hexdigest()


@dataclass
class SegmentUpload:
    """The multipart upload of one segment, as far as it is stored in order.

    Parameters:
      key: The object key.
      upload_id: The multipart upload id.
      parts: Parts 1..``parts`` are stored and hashed.
      etags_md5: :func:`etags_digest` of their ETags (checked against ListParts on resume
        and before Complete; a list of 10,000 ETags per segment would bloat checkpoints).
      state: :data:`UPLOADING` (default), :data:`COMPLETING` or :data:`COMPLETED`.
      object_etag: Once the commit of the segment began, the ETag its object must have
        (computed from the parts' MD5s; ``None`` where ETags are not MD5s), and once
        :data:`COMPLETED`, the ETag it has. A resumed commit keeps an object only if it
        still has this ETag and the segment's size.
    """

    key: str
    upload_id: str
    parts: int = 0
    etags_md5: str = field(default_factory=lambda: etags_digest([]))
    state: str = UPLOADING
    object_etag: str | None = None

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> SegmentUpload:
        state = item.get("state", UPLOADING)
        if state not in _STATES:
            raise ValueError(f"unknown segment state {state!r}")
        etag = item.get("object_etag")
        return cls(
            str(item["key"]),
            str(item["upload_id"]),
            int(item["parts"]),
            str(item["etags_md5"]),
            state,
            None if etag is None else str(etag),
        )


@dataclass
class Checkpoint:
    """Where a transfer stands at a part boundary; JSON-serialisable via :meth:`to_dict`.

    Parameters:
      plan: The segment and part layout (kept, so a resume cuts the image the same way).
      md5: The published md5 the transfer verifies against (a re-export changes it).
      offset: Bytes stored and hashed, from the start: the resume point.
      md5_state: The MD5 chain's state at ``offset`` (:meth:`ResumableMd5.export`), or
        ``None`` where it cannot be exported (the resume then re-hashes the prefix).
      segments: The multipart upload of each segment started so far, by segment index.
      validator: The download's ETag or Last-Modified, to pin ``If-Range`` on resume.
      source_state: What an open-ended source needs to resume at ``offset`` (JSON), if any.
    """

    plan: PartPlan
    md5: str
    offset: int = 0
    md5_state: str | None = None
    segments: dict[int, SegmentUpload] = field(default_factory=dict)
    validator: str | None = None
    source_state: dict[str, Any] | None = None

    @property
    def parts_done(self) -> int:
        """Parts stored and hashed in order from the first (the index of the next one)."""
        return -(-self.offset // self.plan.part_size)

    def open_uploads(self) -> list[tuple[str, str]]:
        """Return ``(key, upload_id)`` of every upload started and not completed."""
        return [
            (s.key, s.upload_id) for _, s in sorted(self.segments.items()) if s.state != COMPLETED
        ]

    def completed_keys(self) -> list[str]:
        """Return the keys of the objects the transfer may have completed."""
        return [s.key for _, s in sorted(self.segments.items()) if s.state != UPLOADING]

    def copy(self) -> Checkpoint:
        """Return a deep copy (a transfer changes its own, never the caller's)."""
        return Checkpoint.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "plan": self.plan.to_dict(),
            "md5": self.md5,
            "offset": self.offset,
            "md5_state": self.md5_state,
            "segments": {str(i): asdict(upload) for i, upload in self.segments.items()},
            "validator": self.validator,
            "source_state": self.source_state,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        """Rebuild a checkpoint from :meth:`to_dict` output.

        Raises:
          ValueError: When ``data`` is not a checkpoint of a known format.
        """
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a transfer checkpoint of a known format")
        try:
            return cls(
                plan=PartPlan.from_dict(data["plan"]),
                md5=str(data["md5"]),
                offset=int(data["offset"]),
                md5_state=data.get("md5_state"),
                segments={
                    int(i): SegmentUpload.from_dict(item) for i, item in data["segments"].items()
                },
                validator=data.get("validator"),
                source_state=_state(data.get("source_state")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed transfer checkpoint: {exc}") from None


def _state(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError("source_state is not an object")
    return value


class TransferStopped(TransferError):
    """The ``stop`` event ended the transfer at a part boundary; resume from :attr:`checkpoint`.

    The uploads of :attr:`checkpoint` stay open. It is ``None`` when no part was stored
    yet (then nothing stays open).
    """

    permanent = False

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        done = checkpoint.offset if checkpoint else 0
        super().__init__(f"transfer stopped at byte {done}; it resumes from there")
        self.checkpoint = checkpoint
