"""Resuming a transfer: adopt a checkpoint the store still agrees with, or clear the way.

:func:`adopt` checks a saved :class:`~worker.transfer.checkpoint.Checkpoint` against the
store (ListParts of every open upload, HEAD of every completed object) and returns what the
engine goes on with. The rule it keeps: no part counts as stored unless it was checked
against the very bytes that go into the image MD5. With the saved MD5 state, the parts below
the checkpoint were checked when they were stored; parts beyond it are only *found*, kept if
their ETag is the MD5 of the bytes read again. Without the state (no libcrypto MD5, a FIPS
host), the prefix is read and hashed again and every stored part is only found.

:func:`clear_leftovers` removes what a lost run left, and :func:`discard_transfer` drops a
transfer's uploads for good; neither ever deletes a manifest, and image objects only after
looking for one right before.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from worker.archive import ArchiveStore
from worker.errors import ArchiveExists, SnaparchiveError
from worker.manifest import ArchiveId
from worker.md5state import Md5, new_md5
from worker.parts import SegmentSpan
from worker.transfer.checkpoint import (
    COMPLETED,
    COMPLETING,
    UPLOADING,
    Checkpoint,
    SegmentUpload,
    etags_digest,
)
from worker.transfer.source import Scope, TransferSource, archive_scope

log = logging.getLogger(__name__)


@dataclass
class Resumption:
    """A checkpoint that holds, and what goes on from it.

    Attributes:
      checkpoint: The adopted checkpoint (its offset back at 0 when the prefix is re-hashed).
      md5: The MD5 chain at the checkpoint's offset.
      found: Parts the store holds that are not checked yet: part index -> ETag.
      etag_hashes: Per segment, the running :func:`etags_digest` of its parts in order.
    """

    checkpoint: Checkpoint
    md5: Md5
    found: dict[int, str] = field(default_factory=dict)
    etag_hashes: dict[int, Any] = field(default_factory=dict)


async def adopt(
    store: ArchiveStore, source: TransferSource, saved: Checkpoint
) -> Resumption | None:
    """Check ``saved`` against the store; return how to go on, or ``None`` to start over
    (the export changed, the checkpoint does not add up, or the store contradicts it)."""
    name = str(source.archive)
    if saved.md5 != source.expected_md5:
        log.warning("%s: the export changed since the checkpoint; starting over", name)
        return None
    if not _adds_up(saved):
        log.warning("%s: the checkpoint does not add up; starting over", name)
        return None
    md5 = restore_md5(saved, name)
    rehash = md5 is None
    if rehash and any(u.state != UPLOADING for u in saved.segments.values()):
        # Completed objects cannot be checked part by part against a re-hash.
        log.warning("%s: cannot re-hash a half-made commit; starting over", name)
        return None
    resumption = Resumption(saved, md5 or new_md5())
    for index, upload in saved.segments.items():
        why = await _adopt_segment(store, source, resumption, index, upload, rehash)
        if why is not None:
            log.warning("%s: %s; starting over", name, why)
            return None
    if rehash:
        log.info("%s: re-hashing the first %d bytes from the source", name, saved.offset)
        saved.offset, saved.md5_state = 0, None
    return resumption


def _adds_up(saved: Checkpoint) -> bool:
    """Whether each segment holds its share of the parts below the offset, and no more."""
    plan, done = saved.plan, saved.parts_done
    shares = {
        span.index: min(max(done - span.index * plan.parts_per_segment, 0), span.parts)
        for span in plan.segments()
    }
    return all(shares.get(i) == upload.parts for i, upload in saved.segments.items()) and all(
        i in saved.segments for i, share in shares.items() if share
    )


def restore_md5(saved: Checkpoint, name: str) -> Md5 | None:
    """Continue the MD5 chain from the checkpoint; ``None`` when the prefix must be hashed
    again from the source (no state saved, or one this host cannot restore)."""
    if saved.md5_state is not None:
        try:
            md5 = new_md5(saved.md5_state)
        except ValueError as exc:
            log.warning("%s: cannot restore the MD5 state (%s)", name, exc)
        else:
            if md5.length == saved.offset:
                return md5
            log.warning("%s: the MD5 state does not match the checkpoint", name)
    return None if saved.offset else new_md5()


async def _adopt_segment(
    store: ArchiveStore,
    source: TransferSource,
    resumption: Resumption,
    index: int,
    upload: SegmentUpload,
    rehash: bool,
) -> str | None:
    """Adopt one segment's upload or object; return why it cannot be, or ``None``."""
    plan = resumption.checkpoint.plan
    span = plan.segment(index)
    if upload.key != source.object_key(store, index, plan.segment_count):
        return "the checkpoint names a foreign key"
    if upload.state == COMPLETED:
        return None if await object_holds(store, upload, span) else "a completed object changed"
    stored = await store.list_parts(upload.key, upload.upload_id)
    if stored is None:
        if upload.state == COMPLETING and await object_holds(store, upload, span):
            upload.state = COMPLETED  # the completion landed before the crash
            return None
        return "a checkpointed upload is gone"
    first = index * plan.parts_per_segment
    in_order = [p for p in stored if p.number <= upload.parts]
    if (
        [p.number for p in in_order] != list(range(1, upload.parts + 1))
        or any(p.size != plan.part(first + p.number - 1).size for p in in_order)
        or etags_digest([p.etag for p in in_order]) != upload.etags_md5
    ):
        return "stored parts differ from the checkpoint"
    upload.state = UPLOADING  # a completion that did not land is sent again
    hashed = hashlib.md5()
    if rehash:
        # The prefix is hashed again from the source: each stored part of it is kept only if
        # its ETag is the MD5 of the bytes read now, else it is sent again.
        upload.parts, upload.etags_md5 = 0, etags_digest([])
    else:
        for part in in_order:
            hashed.update(f"{part.etag}\n".encode())
    resumption.etag_hashes[index] = hashed
    low = first if rehash else resumption.checkpoint.parts_done
    for part in stored:
        position = first + part.number - 1
        if low <= position < plan.part_count and part.size == plan.part(position).size:
            resumption.found[position] = part.etag
    return None


async def object_holds(store: ArchiveStore, upload: SegmentUpload, span: SegmentSpan) -> bool:
    """Whether the object of a completed segment is there, with its ETag and size."""
    found = await store.stat(upload.key)
    return (
        found is not None
        and upload.object_etag is not None
        and found.etag == upload.object_etag
        and found.size == span.size
    )


async def clear_leftovers(
    store: ArchiveStore, archive: ArchiveId, saved: Checkpoint | None, scope: Scope | None = None
) -> None:
    """Remove what a lost run of this archive left: uploads no checkpoint knows, and image
    objects completed by a commit that never wrote the manifest.

    Parameters:
      scope: Where the transfer's uploads and objects are (default: the archive's own).

    Raises:
      ArchiveExists: A manifest appeared meanwhile (nothing was deleted).
    """
    scope = scope or archive_scope(store, archive)
    known = {upload.upload_id for upload in saved.segments.values()} if saved else set()
    for upload in await store.list_open_uploads(scope.uploads):
        if upload.upload_id not in known:
            log.info("%s: aborting a stray upload of %s", archive, upload.key)
            await store.abort_upload(upload.key, upload.upload_id)
    ours = set(saved.completed_keys()) if saved else set()
    leftovers = [
        k for k in await store.list_keys(scope.uploads) if scope.objects(k) and k not in ours
    ]
    await delete_unless_archived(store, archive, leftovers, scope)


async def discard_transfer(
    store: ArchiveStore,
    archive: ArchiveId,
    checkpoint: Checkpoint | None,
    scope: Scope | None = None,
) -> None:
    """Drop what a transfer left: abort its multipart uploads (the ones of ``checkpoint``
    and any other open one under the archive's prefix, for a checkpoint that is lost or
    unreadable) and delete the objects its commit completed, unless an archive's manifest
    now exists. Best effort: failures are logged, ``gc`` sweeps later.

    Only call it while holding the archive's lease: the uploads under the prefix are then
    this transfer's own. ``scope`` says where they are (default: the archive's own).
    """
    scope = scope or archive_scope(store, archive)
    try:
        uploads = set(checkpoint.open_uploads()) if checkpoint else set()
        uploads.update(
            (u.key, u.upload_id) for u in await store.list_open_uploads(scope.uploads)
        )
        for key, upload_id in sorted(uploads):
            await store.abort_upload(key, upload_id)
        if checkpoint is not None:
            await delete_unless_archived(store, archive, checkpoint.completed_keys(), scope)
    except SnaparchiveError as error:
        log.error("%s: cannot drop what the transfer left (gc will): %s", archive, error)


async def delete_unless_archived(
    store: ArchiveStore, archive: ArchiveId, keys: list[str], scope: Scope | None = None
) -> None:
    """Delete image objects of an archive that has no manifest (``scope``'s manifest: by
    default the archive's own).

    Raises:
      ArchiveExists: An object is at the manifest key: the objects may be an archive's, and
        nothing is deleted.
    """
    if not keys:
        return
    manifest_key = (scope or archive_scope(store, archive)).manifest
    # Looked at right before deleting: a run that committed meanwhile keeps its archive.
    if await store.exists(manifest_key):
        raise ArchiveExists(manifest_key)
    for key in keys:
        log.info("%s: deleting %s, left by a commit that did not finish", archive, key)
        await store.delete_object(key)
