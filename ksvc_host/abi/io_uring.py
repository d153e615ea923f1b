"""io_uring's user ABI: opcodes, flags, struct layouts, and which kernel added what.

Written from the kernel's UAPI as facts and pinned by tests against the C
header (where it has them) and the running kernel's probe.
"""

from __future__ import annotations

import enum
import re
import struct
from types import MappingProxyType
from typing import Final, NamedTuple

NR_IO_URING_SETUP: Final = 425
NR_IO_URING_ENTER: Final = 426
NR_IO_URING_REGISTER: Final = 427


class IoringOp(enum.IntEnum):
    """``enum io_uring_op``, in the kernel's order."""

    NOP = 0
    READV = 1
    WRITEV = 2
    FSYNC = 3
    READ_FIXED = 4
    WRITE_FIXED = 5
    POLL_ADD = 6
    POLL_REMOVE = 7
    SYNC_FILE_RANGE = 8
    SENDMSG = 9
    RECVMSG = 10
    TIMEOUT = 11
    TIMEOUT_REMOVE = 12
    ACCEPT = 13
    ASYNC_CANCEL = 14
    LINK_TIMEOUT = 15
    CONNECT = 16
    FALLOCATE = 17
    OPENAT = 18
    CLOSE = 19
    FILES_UPDATE = 20
    STATX = 21
    READ = 22
    WRITE = 23
    FADVISE = 24
    MADVISE = 25
    SEND = 26
    RECV = 27
    OPENAT2 = 28
    EPOLL_CTL = 29
    SPLICE = 30
    PROVIDE_BUFFERS = 31
    REMOVE_BUFFERS = 32
    TEE = 33
    SHUTDOWN = 34
    RENAMEAT = 35
    UNLINKAT = 36
    MKDIRAT = 37
    SYMLINKAT = 38
    LINKAT = 39
    MSG_RING = 40
    FSETXATTR = 41
    SETXATTR = 42
    FGETXATTR = 43
    GETXATTR = 44
    SOCKET = 45
    URING_CMD = 46
    SEND_ZC = 47
    SENDMSG_ZC = 48
    READ_MULTISHOT = 49
    WAITID = 50
    FUTEX_WAIT = 51
    FUTEX_WAKE = 52
    FUTEX_WAITV = 53
    FIXED_FD_INSTALL = 54
    FTRUNCATE = 55
    BIND = 56
    LISTEN = 57
    RECV_ZC = 58
    EPOLL_WAIT = 59
    READV_FIXED = 60
    WRITEV_FIXED = 61
    PIPE = 62


# Kernel release -> one past the last opcode it supports (opcodes only ever append).
_OPCODE_LIMITS: Final = (
    ((5, 1), IoringOp.POLL_REMOVE + 1),
    ((5, 2), IoringOp.SYNC_FILE_RANGE + 1),
    ((5, 3), IoringOp.RECVMSG + 1),
    ((5, 4), IoringOp.TIMEOUT + 1),
    ((5, 5), IoringOp.CONNECT + 1),
    ((5, 6), IoringOp.EPOLL_CTL + 1),
    ((5, 7), IoringOp.REMOVE_BUFFERS + 1),
    ((5, 8), IoringOp.TEE + 1),
    ((5, 11), IoringOp.UNLINKAT + 1),
    ((5, 15), IoringOp.LINKAT + 1),
    ((5, 18), IoringOp.MSG_RING + 1),
    ((5, 19), IoringOp.URING_CMD + 1),
    ((6, 0), IoringOp.SEND_ZC + 1),
    ((6, 1), IoringOp.SENDMSG_ZC + 1),
    ((6, 7), IoringOp.FUTEX_WAITV + 1),
    ((6, 8), IoringOp.FIXED_FD_INSTALL + 1),
    ((6, 9), IoringOp.FTRUNCATE + 1),
    ((6, 11), IoringOp.LISTEN + 1),
    ((6, 15), IoringOp.WRITEV_FIXED + 1),
    ((6, 16), IoringOp.PIPE + 1),
)

STATIC_KERNELS: Final = ("6.8", "6.11", "6.14", "6.15", "6.16", "newest")
"""The named tables the ``static`` router and ``ksvc probe --kernel`` offer."""


def opcodes_for_kernel(version: str) -> frozenset[int]:
    """Opcodes supported by kernel *version* (``"6.8"``, ``"6.11.3"``, ``"newest"``)."""
    if version == "newest":
        return frozenset(int(op) for op in IoringOp)
    m = re.fullmatch(r"(\d+)\.(\d+)(?:[.\-+].*)?", version.strip())
    if not m:
        raise ValueError(f"kernel version {version!r} is not of the form MAJOR.MINOR (e.g. 6.8) or 'newest'")
    want = (int(m.group(1)), int(m.group(2)))
    limit = 0
    for release, end in _OPCODE_LIMITS:
        if want >= release:
            limit = end
    if not limit:
        raise ValueError(f"kernel {version} predates io_uring (5.1); give 5.1 or later, or 'newest'")
    return frozenset(range(limit))


class SetupFlag(enum.IntFlag):
    """``IORING_SETUP_*`` (io_uring_params.flags)."""

    IOPOLL = 1 << 0
    SQPOLL = 1 << 1
    SQ_AFF = 1 << 2
    CQSIZE = 1 << 3
    CLAMP = 1 << 4
    ATTACH_WQ = 1 << 5
    R_DISABLED = 1 << 6
    SUBMIT_ALL = 1 << 7
    COOP_TASKRUN = 1 << 8
    TASKRUN_FLAG = 1 << 9
    SQE128 = 1 << 10
    CQE32 = 1 << 11
    SINGLE_ISSUER = 1 << 12
    DEFER_TASKRUN = 1 << 13
    NO_MMAP = 1 << 14
    REGISTERED_FD_ONLY = 1 << 15
    NO_SQARRAY = 1 << 16


class Feature(enum.IntFlag):
    """``IORING_FEAT_*`` (io_uring_params.features, reported by the kernel)."""

    SINGLE_MMAP = 1 << 0
    NODROP = 1 << 1
    SUBMIT_STABLE = 1 << 2
    RW_CUR_POS = 1 << 3
    CUR_PERSONALITY = 1 << 4
    FAST_POLL = 1 << 5
    POLL_32BITS = 1 << 6
    SQPOLL_NONFIXED = 1 << 7
    EXT_ARG = 1 << 8
    NATIVE_WORKERS = 1 << 9
    RSRC_TAGS = 1 << 10
    CQE_SKIP = 1 << 11
    LINKED_FILE = 1 << 12
    REG_REG_RING = 1 << 13


class EnterFlag(enum.IntFlag):
    """``IORING_ENTER_*`` (io_uring_enter flags)."""

    GETEVENTS = 1 << 0
    SQ_WAKEUP = 1 << 1
    SQ_WAIT = 1 << 2
    EXT_ARG = 1 << 3
    REGISTERED_RING = 1 << 4


class SqRingFlag(enum.IntFlag):
    """``IORING_SQ_*`` (the SQ ring's flags word, written by the kernel)."""

    NEED_WAKEUP = 1 << 0
    CQ_OVERFLOW = 1 << 1
    TASKRUN = 1 << 2


class CqRingFlag(enum.IntFlag):
    """``IORING_CQ_*`` (the CQ ring's flags word, written by the application)."""

    EVENTFD_DISABLED = 1 << 0


class SqeFlag(enum.IntFlag):
    """``IOSQE_*`` (sqe.flags)."""

    FIXED_FILE = 1 << 0
    IO_DRAIN = 1 << 1
    IO_LINK = 1 << 2
    IO_HARDLINK = 1 << 3
    ASYNC = 1 << 4
    BUFFER_SELECT = 1 << 5
    CQE_SKIP_SUCCESS = 1 << 6


class CqeFlag(enum.IntFlag):
    """``IORING_CQE_F_*`` (cqe.flags)."""

    BUFFER = 1 << 0
    MORE = 1 << 1
    SOCK_NONEMPTY = 1 << 2
    NOTIF = 1 << 3


CQE_BUFFER_SHIFT: Final = 16
"""The provided-buffer id sits in cqe.flags >> 16."""


class Register(enum.IntEnum):
    """``io_uring_register`` opcodes."""

    REGISTER_BUFFERS = 0
    UNREGISTER_BUFFERS = 1
    REGISTER_FILES = 2
    UNREGISTER_FILES = 3
    REGISTER_EVENTFD = 4
    UNREGISTER_EVENTFD = 5
    REGISTER_FILES_UPDATE = 6
    REGISTER_EVENTFD_ASYNC = 7
    REGISTER_PROBE = 8
    REGISTER_PERSONALITY = 9
    UNREGISTER_PERSONALITY = 10
    REGISTER_RESTRICTIONS = 11
    REGISTER_ENABLE_RINGS = 12
    REGISTER_FILES2 = 13
    REGISTER_FILES_UPDATE2 = 14
    REGISTER_BUFFERS2 = 15
    REGISTER_BUFFERS_UPDATE = 16
    REGISTER_IOWQ_AFF = 17
    UNREGISTER_IOWQ_AFF = 18
    REGISTER_IOWQ_MAX_WORKERS = 19
    REGISTER_RING_FDS = 20
    UNREGISTER_RING_FDS = 21
    REGISTER_PBUF_RING = 22
    UNREGISTER_PBUF_RING = 23
    REGISTER_SYNC_CANCEL = 24
    REGISTER_FILE_ALLOC_RANGE = 25


OFF_SQ_RING: Final = 0
OFF_CQ_RING: Final = 0x8000000
OFF_SQES: Final = 0x10000000
OFF_PBUF_RING: Final = 0x80000000
OFF_PBUF_SHIFT: Final = 16

# Operation-specific flags used when translating syscalls.
IORING_FSYNC_DATASYNC: Final = 1 << 0
IORING_ACCEPT_MULTISHOT: Final = 1 << 0  # in sqe.ioprio
IORING_RECVSEND_POLL_FIRST: Final = 1 << 0  # in sqe.ioprio
IORING_RECV_MULTISHOT: Final = 1 << 1
IORING_RECVSEND_FIXED_BUF: Final = 1 << 2
IORING_SEND_ZC_REPORT_USAGE: Final = 1 << 3
IORING_FILE_INDEX_ALLOC: Final = 0xFFFF_FFFF
IORING_ASYNC_CANCEL_ALL: Final = 1 << 0
IORING_ASYNC_CANCEL_FD: Final = 1 << 1
IORING_ASYNC_CANCEL_ANY: Final = 1 << 2
IO_URING_OP_SUPPORTED: Final = 1 << 0


class Field(NamedTuple):
    """A struct member: byte offset and size."""

    offset: int
    size: int


SQE_SIZE: Final = 64
SQE_FIELDS: Final = MappingProxyType(
    {
        "opcode": Field(0, 1),
        "flags": Field(1, 1),
        "ioprio": Field(2, 2),
        "fd": Field(4, 4),
        "off": Field(8, 8),  # also addr2
        "addr": Field(16, 8),  # also splice_off_in
        "len": Field(24, 4),
        "op_flags": Field(28, 4),  # rw_flags, open_flags, statx_flags, ...
        "user_data": Field(32, 8),
        "buf_index": Field(40, 2),  # also buf_group
        "personality": Field(42, 2),
        "file_index": Field(44, 4),  # also splice_fd_in, addr_len
        "addr3": Field(48, 8),
    }
)
"""``struct io_uring_sqe`` (64 bytes; 56..63 is padding)."""
SQE_STRUCT: Final = struct.Struct("<BBHiQQIIQHHIQ8x")
"""The same SQE for ``struct``: the fields of :data:`SQE_FIELDS` in order, ``fd`` signed, then the padding."""

CQE_SIZE: Final = 16
CQE_FIELDS: Final = MappingProxyType({"user_data": Field(0, 8), "res": Field(8, 4), "flags": Field(12, 4)})
"""``struct io_uring_cqe``."""

PARAMS_SIZE: Final = 120
PARAMS_FIELDS: Final = MappingProxyType(
    {
        "sq_entries": Field(0, 4),
        "cq_entries": Field(4, 4),
        "flags": Field(8, 4),
        "sq_thread_cpu": Field(12, 4),
        "sq_thread_idle": Field(16, 4),
        "features": Field(20, 4),
        "wq_fd": Field(24, 4),
        "sq_off": Field(40, 40),
        "cq_off": Field(80, 40),
    }
)
"""``struct io_uring_params`` (resv[3] at 28..39)."""

SQRING_OFFSETS: Final = (
    "head",
    "tail",
    "ring_mask",
    "ring_entries",
    "flags",
    "dropped",
    "array",
    "resv1",
    "user_addr",
)
"""``struct io_sqring_offsets``: seven u32 then u32 resv1 and u64 user_addr (40 bytes)."""
CQRING_OFFSETS: Final = (
    "head",
    "tail",
    "ring_mask",
    "ring_entries",
    "overflow",
    "cqes",
    "flags",
    "resv1",
    "user_addr",
)
"""``struct io_cqring_offsets``: seven u32 then u32 resv1 and u64 user_addr (40 bytes)."""

PROBE_HEADER_SIZE: Final = 16
PROBE_OP_SIZE: Final = 8
"""``struct io_uring_probe``: u8 last_op, u8 ops_len, u16 resv, u32 resv2[3], then ``struct io_uring_probe_op ops[]``
(u8 op, u8 resv, u16 flags, u32 resv2)."""
