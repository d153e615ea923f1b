"""IoBackend: an io_uring instance the dispatcher feeds with SQEs."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from ksvc_host.abi.io_uring import SQE_STRUCT

_U64 = (1 << 64) - 1


class SqeSpec:
    """The fields of one io_uring SQE, by their kernel names.

    Union members of ``struct io_uring_sqe`` get the name of their slot:
    ``off`` is also ``addr2``; ``addr`` is also ``splice_off_in``;
    ``op_flags`` is ``rw_flags``/``open_flags``/``statx_flags``/... (the u32
    at byte 28); ``buf_index`` is also ``buf_group``; ``file_index`` is also
    ``splice_fd_in`` and ``addr_len`` (low 16 bits); ``addr3`` is the u64
    at byte 48. Anything left at zero is written as zero.
    """

    __slots__ = (
        "opcode",
        "flags",
        "ioprio",
        "fd",
        "off",
        "addr",
        "len",
        "op_flags",
        "buf_index",
        "personality",
        "file_index",
        "addr3",
    )

    def __init__(
        self,
        opcode: int,
        fd: int = 0,
        *,
        off: int = 0,
        addr: int = 0,
        len: int = 0,  # noqa: A002 - the kernel's field name
        op_flags: int = 0,
        flags: int = 0,
        ioprio: int = 0,
        buf_index: int = 0,
        personality: int = 0,
        file_index: int = 0,
        addr3: int = 0,
    ) -> None:
        self.opcode = opcode
        self.flags = flags
        self.ioprio = ioprio
        self.fd = fd
        self.off = off
        self.addr = addr
        self.len = len
        self.op_flags = op_flags
        self.buf_index = buf_index
        self.personality = personality
        self.file_index = file_index
        self.addr3 = addr3

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k))
        return f"SqeSpec({fields})"

    def to_bytes(self) -> bytes:
        """The 64-byte ``struct io_uring_sqe`` (``user_data`` zero: whoever submits it sets its own)."""
        return SQE_STRUCT.pack(self.opcode, self.flags, self.ioprio, self.fd, self.off & _U64, self.addr & _U64,
                               self.len, self.op_flags, 0, self.buf_index, self.personality, self.file_index,
                               self.addr3 & _U64)  # fmt: skip

    @classmethod
    def from_bytes(cls, sqe: bytes) -> SqeSpec:
        """The fields of a 64-byte SQE (its ``user_data`` is not one of them)."""
        (opcode, flags, ioprio, fd, off, addr, length, op_flags, _, buf_index, personality, file_index,
         addr3) = SQE_STRUCT.unpack(sqe)  # fmt: skip
        return cls(opcode, fd, off=off, addr=addr, len=length, op_flags=op_flags, flags=flags, ioprio=ioprio,
                   buf_index=buf_index, personality=personality, file_index=file_index, addr3=addr3)


class IoCompletion(NamedTuple):
    """One CQE as the backend hands it back."""

    user_data: int
    result: int
    flags: int


@runtime_checkable
class IoBackend(Protocol):
    """An io_uring instance.

    Contract: ``submit`` and ``flush`` never block (a full SQ makes
    ``submit`` return ``False``: back-pressure, nothing is lost);
    ``poll_completions`` never blocks; every SQE accepted by ``submit``
    yields at least one CQE with its ``user_data`` (a multishot series ends
    with a CQE without IORING_CQE_F_MORE); ``cancel`` is best effort and the
    cancelled operation still completes (with ``-ECANCELED`` or its result);
    ``shutdown`` cancels what is in flight, reaps it, and frees the ring.
    """

    name: str
    capacity: int
    """Number of SQ entries."""

    def submit(self, user_data: int, sqe: SqeSpec) -> bool:
        """Queue one SQE; ``False`` when the SQ is full. Does not enter the kernel."""
        ...

    def flush(self) -> int:
        """Hand queued SQEs to the kernel (one ``io_uring_enter`` at most); return how many."""
        ...

    def poll_completions(self, max_count: int = 64) -> list[IoCompletion]:
        """Reap up to *max_count* CQEs without waiting."""
        ...

    def cancel(self, user_data: int) -> bool:
        """Ask the kernel to cancel the request tagged *user_data*; ``True`` if asked."""
        ...

    def inflight(self) -> int:
        """SQEs submitted whose final CQE has not been reaped."""
        ...

    def probe_opcodes(self) -> frozenset[int]:
        """Opcodes the running kernel supports (IORING_REGISTER_PROBE)."""
        ...

    def set_wakeup_fd(self, fd: int) -> None:
        """Have the kernel signal eventfd *fd* whenever a CQE is posted."""
        ...

    def shutdown(self) -> None:
        """Cancel and reap everything in flight, then close the ring."""
        ...
