"""The ``fixed-files`` feature: IORING_REGISTER_FILES with a sparse table.

At ring set-up a table of ``slots`` empty entries is registered. A
descriptor registered with :meth:`FixedFiles.register` (hot descriptors:
the listening socket, a file read over and over) takes a slot; every SQE
naming it is rewritten to use the slot with IOSQE_FIXED_FILE, which spares
the kernel a file-table lookup and reference per operation. Closing the
descriptor through KSVC releases its slot first. A registered descriptor
must not be closed behind KSVC's back (``os.close``): unregister it first.
"""

from __future__ import annotations

import threading
from typing import Any

from ksvc_host.abi.io_uring import IoringOp, SqeFlag
from ksvc_host.traits.io_backend import SqeSpec

# Opcodes whose sqe.fd may be a fixed-file index.
_FIXED_OK = frozenset(
    int(op)
    for op in (
        IoringOp.READV, IoringOp.WRITEV, IoringOp.FSYNC, IoringOp.READ_FIXED, IoringOp.WRITE_FIXED,
        IoringOp.SYNC_FILE_RANGE, IoringOp.SENDMSG, IoringOp.RECVMSG, IoringOp.ACCEPT, IoringOp.CONNECT,
        IoringOp.FALLOCATE, IoringOp.STATX, IoringOp.READ, IoringOp.WRITE, IoringOp.FADVISE, IoringOp.SEND,
        IoringOp.RECV, IoringOp.EPOLL_CTL, IoringOp.SHUTDOWN, IoringOp.SEND_ZC, IoringOp.FTRUNCATE,
        IoringOp.BIND, IoringOp.LISTEN,
    )
)  # fmt: skip


class FixedFiles:
    """Feature ``fixed-files``; also the handle for registering descriptors."""

    name = "fixed-files"

    def __init__(self, slots: int = 64) -> None:
        if not 1 <= slots <= 32768:
            raise ValueError(f"fixed_file_slots must be 1..32768, got {slots}")
        self.slots = slots
        self._slot_of: dict[int, int] = {}
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()
        self._ring: Any = None
        self.rewritten = 0
        """SQEs that used a fixed file."""

    def after_setup(self, backend: Any) -> None:
        """Register the sparse table; expose this object as ``backend.fixed_files``."""
        self._ring = backend.ring
        self._ring.register_files([-1] * self.slots)
        backend.fixed_files = self

    def register(self, fd: int) -> int:
        """Give *fd* a slot (idempotent); return the slot. ``OSError`` when the table is full."""
        with self._lock:
            if fd in self._slot_of:
                return self._slot_of[fd]
            if not self._free:
                raise OSError(23, f"all {self.slots} fixed-file slots are taken; raise options['fixed_file_slots']")
            slot = self._free.pop()
            self._ring.register_files_update(slot, [fd])
            self._slot_of[fd] = slot
            return slot

    def unregister(self, fd: int) -> None:
        """Release *fd*'s slot (no error if it has none)."""
        with self._lock:
            slot = self._slot_of.pop(fd, None)
            if slot is not None:
                self._ring.register_files_update(slot, [-1])
                self._free.append(slot)

    def registered(self) -> dict[int, int]:
        """Descriptor -> slot."""
        return dict(self._slot_of)

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """Use the slot of a registered descriptor; release the slot on CLOSE."""
        slot = self._slot_of.get(sqe.fd)
        if slot is None or sqe.flags & SqeFlag.FIXED_FILE:
            return sqe
        if sqe.opcode == IoringOp.CLOSE:
            self.unregister(sqe.fd)
        elif sqe.opcode in _FIXED_OK:
            sqe.fd = slot
            sqe.flags |= SqeFlag.FIXED_FILE
            self.rewritten += 1
        return sqe
