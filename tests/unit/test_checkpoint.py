"""Checkpoints survive JSON; multipart ETags are computed as S3 does."""

import hashlib
import json

import pytest

from worker.parts import PartPlan
from worker.transfer import Checkpoint, SegmentUpload, etags_digest, multipart_etag
from worker.units import MiB


def _checkpoint():
    return Checkpoint(
        plan=PartPlan(23 * MiB, 5 * MiB, 10 * MiB),
        md5="0" * 32,
        offset=15 * MiB,
        md5_state="bWQ1Y3R4MTo=",
        segments={
            0: SegmentUpload("p/image.seg00000", "up-0", 2, etags_digest(["a", "b"])),
            1: SegmentUpload("p/image.seg00001", "up-1", 1, etags_digest(["c"])),
        },
        validator='"etag"',
    )


def test_round_trip_through_json():
    checkpoint = _checkpoint()
    restored = Checkpoint.from_dict(json.loads(json.dumps(checkpoint.to_dict())))
    assert restored == checkpoint
    assert restored.parts_done == 3
    assert restored.open_uploads() == [("p/image.seg00000", "up-0"), ("p/image.seg00001", "up-1")]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.pop("plan"),
        lambda d: d.update(format=99),
        lambda d: d.update(offset="many"),
        lambda d: d["segments"]["0"].pop("upload_id"),
        lambda d: d.update(plan={"total": 1, "part_size": 3, "segment_size": 4}),
    ],
)
def test_malformed_checkpoints_are_refused(mangle):
    data = _checkpoint().to_dict()
    mangle(data)
    with pytest.raises(ValueError, match="checkpoint"):
        Checkpoint.from_dict(data)


def test_multipart_etag_is_md5_of_part_digests():
    parts = [b"a" * 10, b"b" * 7]
    md5s = [hashlib.md5(p).hexdigest() for p in parts]
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    assert multipart_etag(md5s) == hashlib.md5(joined).hexdigest() + "-2"


def test_etags_digest_depends_on_order_and_content():
    assert etags_digest(["a", "b"]) != etags_digest(["b", "a"])
    assert etags_digest(["ab"]) != etags_digest(["a", "b"])
    assert etags_digest([]) == hashlib.md5().hexdigest()
