"""The resumable MD5 against hashlib: random data, random lengths, random split points."""

import hashlib
import random

import pytest

from worker.md5state import HashlibMd5, ResumableMd5, new_md5, resumable_available

pytestmark = pytest.mark.skipif(not resumable_available(), reason="libcrypto MD5 unavailable")


@pytest.mark.parametrize("seed", range(20))
def test_resumed_chain_equals_hashlib(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 300_000))
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(1, 6)))
    md5 = new_md5()
    start = 0
    for cut in [*cuts, len(data)]:
        md5.update(bytearray(data[start:cut]))
        # Every resume goes through the exported text, as a checkpoint does.
        md5 = new_md5(md5.export())
        assert md5.length == cut
        start = cut
    assert md5.hexdigest() == hashlib.md5(data).hexdigest()


def test_digest_does_not_end_the_chain():
    md5 = ResumableMd5()
    md5.update(b"hello ")
    assert md5.hexdigest() == hashlib.md5(b"hello ").hexdigest()
    md5.update(memoryview(b"world"))
    assert md5.hexdigest() == hashlib.md5(b"hello world").hexdigest()


def test_updates_from_views_of_a_reused_buffer():
    buf = bytearray(random.Random(1).randbytes(1 << 20))
    md5 = ResumableMd5()
    view = memoryview(buf)
    md5.update(view[:1000])
    md5.update(view[1000:])
    assert md5.hexdigest() == hashlib.md5(buf).hexdigest()


@pytest.mark.parametrize("bad", ["not base64!", "aGVsbG8=", ""])
def test_malformed_state_is_refused(bad):
    with pytest.raises(ValueError, match="not an exported MD5 state"):
        ResumableMd5(bad)


def test_hashlib_fallback_has_no_state():
    md5 = HashlibMd5()
    md5.update(b"abc")
    assert md5.export() is None
    assert md5.length == 3
    assert md5.hexdigest() == hashlib.md5(b"abc").hexdigest()
