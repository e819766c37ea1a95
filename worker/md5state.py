"""An MD5 whose running state can be saved at a part boundary and continued later.

The whole-image MD5 is one sequential chain over up to 50 TiB, and :mod:`hashlib`
objects cannot export their state. OpenSSL's legacy ``MD5_Init``/``MD5_Update``
work on a caller-owned ``MD5_CTX``: a plain 92-byte struct with no pointers, so
its bytes *are* the state. Those functions are deprecated in OpenSSL 3 but still
exported by ``libcrypto.so.3``; ctypes releases the GIL around each call, so a
multi-MiB ``update`` runs in parallel with the event loop and the uploads.

Where libcrypto is missing or refuses MD5 (a FIPS build), :func:`new_md5` falls
back to :mod:`hashlib`, whose :meth:`Md5.export` returns ``None``: a resumed
transfer then re-hashes the prefix from the source instead (see
:mod:`worker.transfer.resume`).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import struct
from typing import Protocol

#: ``sizeof(MD5_CTX)``: A, B, C, D, Nl, Nh (6 x 32 bit), data[16] (64 bytes), num.
_CTX_SIZE = 92
#: Marks an exported state, so a state from another format is refused, not misread.
_TAG = b"md5ctx1:"


class Md5(Protocol):
    """What the transfer engine needs from an MD5 chain."""

    @property
    def length(self) -> int:
        """Bytes hashed so far."""
        ...

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def hexdigest(self) -> str: ...

    def export(self) -> str | None: ...


def _load_libcrypto() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for fn in (lib.MD5_Init, lib.MD5_Update, lib.MD5_Final):
            fn.restype = ctypes.c_int
        lib.MD5_Init.argtypes = [ctypes.c_void_p]
        lib.MD5_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.MD5_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    # A FIPS provider fails MD5_Init; a foreign libcrypto might lay MD5_CTX out differently.
    ctx = ctypes.create_string_buffer(_CTX_SIZE)
    out = ctypes.create_string_buffer(16)
    if not lib.MD5_Init(ctx) or not lib.MD5_Update(ctx, b"abc", 3) or not lib.MD5_Final(out, ctx):
        return None
    if out.raw != hashlib.md5(b"abc").digest():
        return None
    return lib


_LIB = _load_libcrypto()


def resumable_available() -> bool:
    """Return whether MD5 states can be exported on this machine (libcrypto found and usable)."""
    return _LIB is not None


def _address(data: bytes | bytearray | memoryview) -> tuple[object, int]:
    """Return (an object keeping the memory alive, its address) without copying writable buffers."""
    view = memoryview(data)
    if not view.readonly:
        holder = (ctypes.c_char * view.nbytes).from_buffer(view)
        return holder, ctypes.addressof(holder)
    raw = data if isinstance(data, bytes) else view.tobytes()
    pointer = ctypes.c_char_p(raw)
    return raw, ctypes.cast(pointer, ctypes.c_void_p).value or 0


class ResumableMd5:
    """MD5 over libcrypto's ``MD5_CTX``; :meth:`export` returns its state as text.

    Parameters:
      state: A value returned by :meth:`export`, to continue that chain; ``None`` starts anew.

    Raises:
      ValueError: When ``state`` is not an exported state or libcrypto is unavailable.
    """

    def __init__(self, state: str | None = None) -> None:
        if _LIB is None:
            raise ValueError("resumable MD5 is unavailable: libcrypto with MD5_Init not found")
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            _LIB.MD5_Init(self._ctx)
            return
        try:
            raw = base64.b64decode(state.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise ValueError("not an exported MD5 state (bad base64)") from None
        if not raw.startswith(_TAG) or len(raw) != len(_TAG) + _CTX_SIZE:
            raise ValueError("not an exported MD5 state (wrong format or length)")
        ctypes.memmove(self._ctx, raw[len(_TAG) :], _CTX_SIZE)

    @property
    def length(self) -> int:
        """Bytes hashed so far, read from the context's bit counter (``Nl``, ``Nh``)."""
        low, high = struct.unpack_from("=II", self._ctx.raw, 16)
        return ((high << 32) | low) >> 3

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` (writable buffers are not copied; the GIL is released meanwhile)."""
        size = memoryview(data).nbytes
        if not size:
            return
        keep, address = _address(data)
        _LIB.MD5_Update(self._ctx, address, size)  # type: ignore[union-attr]
        del keep

    def digest(self) -> bytes:
        """Return the digest of the bytes so far; the chain can go on afterwards."""
        # MD5_Final wipes the context it finishes, so finish a copy.
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(16)
        _LIB.MD5_Final(out, ctx)  # type: ignore[union-attr]
        return out.raw

    def hexdigest(self) -> str:
        """Return :meth:`digest` as 32 lowercase hex digits."""
        return self.digest().hex()

    def export(self) -> str:
        """Return the state as ASCII text for a checkpoint (native byte order of this machine)."""
        return base64.b64encode(_TAG + self._ctx.raw).decode("ascii")


class HashlibMd5:
    """The fallback: :func:`hashlib.md5`, whose state cannot be exported."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self.length = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` (hashlib releases the GIL on buffers over 2 KiB)."""
        self._md5.update(data)
        self.length += memoryview(data).nbytes

    def hexdigest(self) -> str:
        """Return the digest of the bytes so far as hex."""
        return self._md5.hexdigest()

    def export(self) -> None:
        """Return ``None``: hashlib has no exportable state."""
        return None


def new_md5(state: str | None = None) -> Md5:
    """Return a fresh MD5 chain, or one continued from an exported ``state``.

    Parameters:
      state: A value from :meth:`ResumableMd5.export`; default ``None`` (start anew).

    A fresh chain is a :class:`ResumableMd5` where libcrypto allows it, else a
    :class:`HashlibMd5`. Restoring needs libcrypto and raises :class:`ValueError`
    without it or on a malformed state.
    """
    if state is None and _LIB is None:
        return HashlibMd5()
    return ResumableMd5(state)
