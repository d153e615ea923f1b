"""RegisteredBuffers: a pool pinned once with IORING_REGISTER_BUFFERS.

The pool is one anonymous mapping cut into ``count`` buffers of ``size``
bytes, registered with the ring at start-up. A read or write whose buffer
lies inside the pool is rewritten, as it is submitted, from READ/WRITE to
READ_FIXED/WRITE_FIXED with the buffer's index: the kernel skips pinning
the pages on every operation. Anything else passes through unchanged.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from ksvc_host import forksafety
from ksvc_host.abi.io_uring import IoringOp
from ksvc_host.errors import ClosedError
from ksvc_host.traits.buffer_provider import BufferHandle
from ksvc_host.traits.capabilities import ExpressRewrites
from ksvc_host.traits.io_backend import SqeSpec

_FIXED = {int(IoringOp.READ): int(IoringOp.READ_FIXED), int(IoringOp.WRITE): int(IoringOp.WRITE_FIXED)}


class RegisteredBuffers:
    """Buffer provider ``registered``; also the SQE rewriter of the ``fixed-buffers`` feature."""

    name = "registered"
    is_registered = True

    def __init__(self, backend: Any, *, count: int = 64, size: int = 65536) -> None:
        if count < 1 or size < 4096 or size % 4096:
            raise ValueError(f"need count >= 1 and size a multiple of 4096, got count={count} size={size}")
        self.size = size
        # Shared with the kernel, holding the data of every fixed read and write: not inherited across fork().
        self._map = forksafety.SharedMapping(count * size)
        self._base = self._map.address
        self._end = self._base + count * size
        self._free = list(range(count - 1, -1, -1))
        self._lock = threading.Lock()
        self._count = count
        try:
            backend.ring.register_buffers([(self._base + i * size, size) for i in range(count)])
        except OSError as exc:
            self._map.close()
            if exc.errno in (errno.ENOMEM, errno.EPERM):
                raise OSError(
                    exc.errno,
                    f"fixed-buffers: the kernel refused to pin {count * size // 1024} KiB "
                    f"(RLIMIT_MEMLOCK is too low; raise it with 'ulimit -l' or use fewer/smaller buffers "
                    f"via options={{'buffers': N, 'buffer_size': BYTES}})",
                ) from exc
            raise
        # Only SQEs in the pool are rewritten: the dispatcher's express lane may take the others.
        backend.add_preparer(self.prepare, ExpressRewrites(address_range=(self._base, self._end)))
        self.fixed_ops = 0
        """SQEs rewritten to READ_FIXED/WRITE_FIXED."""

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """READ/WRITE into the pool -> READ_FIXED/WRITE_FIXED with the buffer index."""
        fixed = _FIXED.get(sqe.opcode)
        if fixed is not None and self._base <= sqe.addr and sqe.addr + sqe.len <= self._end:
            index = (sqe.addr - self._base) // self.size
            if sqe.addr + sqe.len <= self._base + (index + 1) * self.size:
                sqe.opcode = fixed
                sqe.buf_index = index
                self.fixed_ops += 1
        return sqe

    def acquire(self, min_size: int) -> BufferHandle | None:
        """A registered buffer, or ``None`` when the size does not fit or all are in use."""
        if self._map.closed:
            raise ClosedError("the registered buffer pool belongs to the parent process (or is closed)")
        if min_size > self.size:
            return None
        with self._lock:
            if not self._free:
                return None
            index = self._free.pop()
        return BufferHandle(self._base + index * self.size, self.size, index, self)

    def release(self, handle: BufferHandle) -> None:
        """Return a buffer to the pool."""
        with self._lock:
            if handle.index in self._free or handle.owner is not self:
                raise ValueError(f"registered buffer {handle.index} was already released (or is not ours)")
            self._free.append(handle.index)

    @property
    def pool_size(self) -> int:
        """Buffers in the pool."""
        return self._count

    @property
    def in_use(self) -> int:
        """Buffers handed out."""
        return self._count - len(self._free)
