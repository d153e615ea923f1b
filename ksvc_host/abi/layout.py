"""The KSVC channel ABI, version 2: rings, entries, shared page, create params.

One fixed binary layout, whether a kernel module provides the channel
(``/dev/ksvc``) or the host emulates it in shared memory. All integers are
little-endian and naturally aligned. ``tests/test_abi_layout.py`` pins every
size and offset here.
"""

from __future__ import annotations

import struct
from types import MappingProxyType
from typing import Final, NamedTuple

ABI_VERSION: Final = 2

INSTANCE_MAGIC: Final = 0x4B535643  # "KSVC"
RING_MAGIC: Final = 0x4B52494E  # "KRIN"
SHARED_PAGE_MAGIC: Final = 0x4B534850  # "KSHP"

CORR_ID_NONE: Final = 0xFFFF_FFFF_FFFF_FFFF
"""Correlation id meaning "no id"."""

RING_MIN_ENTRIES: Final = 16
RING_MAX_ENTRIES: Final = 4096
MAX_BATCH: Final = 64
"""The dispatcher takes at most this many submit entries per loop."""

PAGE_SIZE: Final = 4096

# -- ring header ------------------------------------------------------------

RING_HEADER_SIZE: Final = 64
RING_HEADER = struct.Struct("<IIII")
"""magic, ring_size, mask, entry_size at offset 0."""
RING_HEAD_OFFSET: Final = 16
"""u64 head: advanced by the consumer."""
RING_TAIL_OFFSET: Final = 24
"""u64 tail: advanced by the producer."""
RING_ENTRIES_OFFSET: Final = RING_HEADER_SIZE

# -- entries ------------------------------------------------------------------

SUBMIT_ENTRY = struct.Struct("<QII6Q")
"""corr_id u64, syscall_nr u32, flags u32, args[6] u64: 64 bytes."""
SUBMIT_ENTRY_SIZE: Final = 64

SUBMIT_FLAG_LINKED: Final = 1 << 0
"""The next entry starts only after this one succeeds (IOSQE_IO_LINK semantics)."""
SUBMIT_FLAG_DRAIN: Final = 1 << 1
"""Starts after every earlier entry completed; later ones wait for it (IOSQE_IO_DRAIN)."""
SUBMIT_FLAG_MULTISHOT: Final = 1 << 2
"""Appended in this edition: one accept entry, a completion per connection (MORE until the last).
Needs the ``multishot-accept`` io feature; without it the entry completes with ``-EOPNOTSUPP``."""
SUBMIT_FLAGS_VALID: Final = SUBMIT_FLAG_LINKED | SUBMIT_FLAG_DRAIN | SUBMIT_FLAG_MULTISHOT

COMPLETION_ENTRY = struct.Struct("<QqII")
"""corr_id u64, result i64 (value or -errno), flags u32, pad u32: 32 bytes in the ring."""
COMPLETION_ENTRY_SIZE: Final = 32
COMPLETION_FLAG_MORE: Final = 1 << 0
"""More completions follow for this correlation id."""


class SubmitEntry(NamedTuple):
    """A decoded submit entry."""

    corr_id: int
    syscall_nr: int
    flags: int
    args: tuple[int, int, int, int, int, int]

    def pack(self) -> bytes:
        """The 64-byte wire form."""
        return SUBMIT_ENTRY.pack(self.corr_id, self.syscall_nr, self.flags, *self.args)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> SubmitEntry:
        """Decode the entry at *offset* of *data*."""
        corr, nr, flags, *args = SUBMIT_ENTRY.unpack_from(data, offset)
        return cls(corr, nr, flags, tuple(args))


class CompletionEntry(NamedTuple):
    """A decoded completion entry."""

    corr_id: int
    result: int
    flags: int = 0

    def pack(self) -> bytes:
        """The 32-byte wire form (zero padded)."""
        return COMPLETION_ENTRY.pack(self.corr_id, self.result, self.flags, 0).ljust(COMPLETION_ENTRY_SIZE, b"\0")


# -- create params and the device --------------------------------------------

CREATE_PARAMS = struct.Struct("<IIIi4I")
"""submit_ring_entries, complete_ring_entries, flags, eventfd, reserved[4]: 32 bytes."""
CREATE_PARAMS_SIZE: Final = 32


def _ioc(direction: int, type_char: str, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir(2 bits) << 30 | size(14) << 16 | type(8) << 8 | nr(8)
    return (direction << 30) | (size << 16) | (ord(type_char) << 8) | nr


IOC_WRITE: Final = 1
IOC_READ: Final = 2
KSVC_IOC_CREATE: Final = _ioc(IOC_READ | IOC_WRITE, "K", 1, CREATE_PARAMS_SIZE)
"""``_IOWR('K', 1, struct ksvc_create_params)``."""

DEVICE_PATH: Final = "/dev/ksvc"
MMAP_SUBMIT_RING: Final = 0x0
MMAP_COMPLETION_RING: Final = 0x100000
MMAP_SHARED_PAGE: Final = 0x200000


def ring_bytes(entries: int, entry_size: int) -> int:
    """Bytes needed for a ring of *entries* entries of *entry_size*, header included."""
    return RING_HEADER_SIZE + entries * entry_size


def check_ring_entries(entries: int, what: str) -> None:
    """Raise ``ValueError`` unless *entries* is a power of two in the ABI's range."""
    if not (RING_MIN_ENTRIES <= entries <= RING_MAX_ENTRIES) or entries & (entries - 1):
        raise ValueError(f"{what} must be a power of two from {RING_MIN_ENTRIES} to {RING_MAX_ENTRIES}, got {entries}")


# -- shared page ----------------------------------------------------------------


class PageField(NamedTuple):
    """One field of the shared page: offset and struct format (or ``Ns`` for text)."""

    offset: int
    fmt: str


UTS_LEN: Final = 65

SHARED_PAGE_FIELDS: Final = MappingProxyType(
    {
        "magic": PageField(0x00, "<I"),
        "version": PageField(0x04, "<I"),
        "pid": PageField(0x08, "<i"),
        "tgid": PageField(0x0C, "<i"),
        "ppid": PageField(0x10, "<i"),
        "pgid": PageField(0x14, "<i"),
        "sid": PageField(0x18, "<i"),
        "uid": PageField(0x20, "<I"),
        "gid": PageField(0x24, "<I"),
        "euid": PageField(0x28, "<I"),
        "egid": PageField(0x2C, "<I"),
        "suid": PageField(0x30, "<I"),
        "sgid": PageField(0x34, "<I"),
        "release": PageField(0x40, f"{UTS_LEN}s"),
        "nodename": PageField(0x81, f"{UTS_LEN}s"),
        "machine": PageField(0xC2, f"{UTS_LEN}s"),
        "rlimit_nofile": PageField(0x108, "<Q"),
        "rlimit_nproc": PageField(0x110, "<Q"),
        "kthread_cpu": PageField(0x200, "<I"),
        "worker_state": PageField(0x204, "<I"),
        "entries_processed": PageField(0x208, "<Q"),
        "batches_processed": PageField(0x210, "<Q"),
        "io_uring_inflight": PageField(0x218, "<Q"),
        "worker_pool_active": PageField(0x220, "<Q"),
        "submit_head": PageField(0x228, "<Q"),
        "submit_tail": PageField(0x230, "<Q"),
        "completion_head": PageField(0x238, "<Q"),
        "completion_tail": PageField(0x240, "<Q"),
        "clock_monotonic_ns": PageField(0x280, "<Q"),
        "clock_realtime_ns": PageField(0x288, "<Q"),
        "boot_time_ns": PageField(0x290, "<Q"),
        "uts_sysname": PageField(0x2A0, f"{UTS_LEN}s"),
        "uts_version": PageField(0x2E1, f"{UTS_LEN}s"),
    }
)
"""Every shared-page field by name. New fields only ever append."""

WORKER_STATE_IDLE: Final = 0
WORKER_STATE_BUSY: Final = 1
