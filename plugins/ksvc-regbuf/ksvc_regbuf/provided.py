"""ProvidedBufferRing: io_uring picks the receive buffer (IORING_REGISTER_PBUF_RING).

A ring of ``count`` buffers of ``size`` bytes is registered as buffer group
``group``. Every RECV is submitted with IOSQE_BUFFER_SELECT instead of the
caller's pointer; when data arrives the kernel takes a buffer from the
ring, and the CQE names it. The completion filter copies the bytes into
the caller's buffer (a checked copy: a bad pointer gives ``EFAULT``, as
the direct call would), hands the buffer back to the ring at once, and
passes the result on. Memory is committed only while data is in flight,
which is what makes this worthwhile for many mostly idle connections.

Two differences from a plain ``recv`` follow from the kernel receiving
into its own buffer first: if more receives complete than there are
buffers before they are reaped, the extra ones fail with ``-ENOBUFS``
(size ``count`` for the receives you keep in flight); and with a bad
destination pointer the bytes are already taken from the socket when the
copy fails with ``EFAULT``.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

from ksvc_host import forksafety, native
from ksvc_host.abi.io_uring import CQE_BUFFER_SHIFT, CqeFlag, IoringOp, Register, SqeFlag
from ksvc_host.errors import ClosedError
from ksvc_host.traits.buffer_provider import BufferHandle
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec

_BUF = struct.Struct("<QIHH")  # struct io_uring_buf: addr, len, bid, resv (the ring's tail overlays bufs[0].resv)
_TAIL_OFFSET = 14
_REG = struct.Struct("<QIHH24x")  # struct io_uring_buf_reg: ring_addr, ring_entries, bgid, flags, resv[3]


class ProvidedBufferRing:
    """Buffer provider ``provided-ring``."""

    name = "provided-ring"
    is_registered = True

    def __init__(self, backend: Any, *, count: int = 64, size: int = 16384, group: int = 1) -> None:
        if count < 1 or count > 32768 or count & (count - 1):
            raise ValueError(f"provided_buffers must be a power of two up to 32768, got {count}")
        self.count, self.size, self.group = count, size, group
        # The kernel takes buffer addresses from the ring and received bytes land in the buffers: neither
        # may reach a forked child (it could point the parent's receives anywhere, or read them).
        self._ring_mem = forksafety.SharedMapping(max(4096, count * _BUF.size))
        self._bufs = forksafety.SharedMapping(count * size)
        self._ring_view = self._ring_mem.view()
        self._ring_addr = self._ring_mem.address
        self._base = self._bufs.address
        reg = native.alloc(_REG.size)
        _REG.pack_into(native.ffi.buffer(reg), 0, self._ring_addr, count, group, 0)
        backend.ring.register(Register.REGISTER_PBUF_RING, native.address_of(reg), 1)
        self._tail = 0
        self._lock = threading.Lock()
        for bid in range(count):
            self._give_back(bid)
        self._targets: dict[int, tuple[int, int]] = {}
        backend.add_preparer(self.prepare)
        backend.add_completion_filter(self.filter)
        self.selected = 0
        """Receives whose buffer the kernel picked."""

    def _give_back(self, bid: int) -> None:
        with self._lock:
            _BUF.pack_into(self._ring_view, (self._tail & (self.count - 1)) * _BUF.size, self._base + bid * self.size,
                           self.size, bid, 0)  # fmt: skip
            self._tail = (self._tail + 1) & 0xFFFF
            # Publish after the entry is written (x86-64 keeps stores in order).
            struct.pack_into("<H", self._ring_view, _TAIL_OFFSET, self._tail)

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """RECV into the caller's buffer -> RECV with a kernel-selected buffer."""
        if sqe.opcode == IoringOp.RECV and not sqe.flags & SqeFlag.BUFFER_SELECT and sqe.len:
            self._targets[user_data] = (sqe.addr, sqe.len)
            sqe.addr = 0
            sqe.len = min(sqe.len, self.size)
            sqe.flags |= SqeFlag.BUFFER_SELECT
            sqe.buf_index = self.group
        return sqe

    def filter(self, c: IoCompletion) -> IoCompletion | None:
        """Copy the selected buffer into the caller's memory and recycle it."""
        target = self._targets.pop(c.user_data, None)
        if target is None:
            return c
        if not c.flags & CqeFlag.BUFFER:
            return c  # an error (or end of stream) before a buffer was taken
        if self._bufs.closed:
            raise ClosedError("the provided buffers belong to the parent process")
        bid = c.flags >> CQE_BUFFER_SHIFT
        result = c.result
        if result > 0:
            data = bytes(native.ffi.buffer(native.ffi.cast("char *", self._base + bid * self.size), result))
            copied = native.write_user(target[0], data)
            if copied < 0:
                result = copied
        self._give_back(bid)
        self.selected += 1
        return IoCompletion(c.user_data, result, c.flags & ~(CqeFlag.BUFFER | (0xFFFF << CQE_BUFFER_SHIFT)))

    def acquire(self, min_size: int) -> BufferHandle | None:
        """``None``: callers keep their own memory; the kernel picks the receive buffer."""
        return None

    def release(self, handle: BufferHandle) -> None:
        """Nothing is ever lent out."""
        raise ValueError("provided-ring lends no buffers to callers")

    @property
    def pool_size(self) -> int:
        """Buffers in the ring."""
        return self.count

    @property
    def in_use(self) -> int:
        """Receives in flight that will take a buffer."""
        return len(self._targets)
