"""The lanes' translation: when a syscall becomes an io_uring SQE, and which SQE.

One statement of it for both lanes of ksvc-basic, the thread lanes
(:mod:`ksvc_basic.own_rings`) and the dispatcher's express lane
(:mod:`ksvc_basic.express`): :data:`CALLS` is the table each lane is given
when it is built, and :func:`args_fit`, :func:`fd_suits` and
:func:`sqe_fields` are the rules their pure-Python loops apply.
``translation.h`` says the same in C for the compiled loops (``lane.c`` and
``express.c`` include it); the tests run every lane on both.

The rules are those of :mod:`ksvc_host.translate`, the dispatcher's generic
path: a lane takes a call only where the io_uring operation gives exactly
the direct syscall's answer. What a call does not pass the lane leaves to
the generic path.

* arguments (:func:`args_fit`): a descriptor, length and flags that fit
  the SQE's fields; a positioned call's offset at least 0 (io_uring reads
  -1 as "at the file position" where the syscall says ``EINVAL``);
  ``sendto``/``recvfrom`` without an address (RECV and SEND take none);
* descriptor (:func:`fd_suits`): a positioned call on a seekable file (on a
  pipe or socket the syscall says ``ESPIPE`` while io_uring would wait); a
  stream, socket, accept or connect call on a blocking descriptor (with
  ``O_NONBLOCK`` the syscall says ``EAGAIN`` at once, io_uring would wait);
  ``preadv2``/``pwritev2`` both (their offset may be -1, the file position:
  on a pipe the lane leaves them to the host's translation).

A call's arguments are the six unsigned 64-bit words of its submit entry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from ksvc_host import native
from ksvc_host.abi import io_uring as U
from ksvc_host.abi import linux as lx
from ksvc_host.abi.syscalls import SYSCALLS

# The kinds of call (the numbers of translation.h): where its arguments go and which rules apply.
K_NONE: Final = 0
K_STREAM: Final = 1  # read, write: fd, buf, len at the file position; a blocking descriptor
K_POSITIONED: Final = 2  # pread64, pwrite64: fd, buf, len, off >= 0; a seekable descriptor
K_SOCKET: Final = 3  # recvfrom, sendto without an address: fd, buf, len, flags; a blocking socket
K_CLOSE: Final = 4  # close: fd
K_FSYNC: Final = 5  # fsync: fd
K_FDATASYNC: Final = 6  # fdatasync: fd
K_OPENAT: Final = 7  # openat: dirfd, path, flags, mode
K_ACCEPT: Final = 8  # accept4: fd, addr, addrlen*, flags; a blocking socket
K_ACCEPT_PLAIN: Final = 9  # accept: fd, addr, addrlen*
K_CONNECT: Final = 10  # connect: fd, addr, addrlen; a blocking socket
K_STAT: Final = 11  # stat: path, statbuf (STATX at AT_FDCWD)
K_LSTAT: Final = 12  # lstat: path, statbuf (STATX, AT_SYMLINK_NOFOLLOW)
K_FSTAT: Final = 13  # fstat: fd, statbuf (STATX of "", AT_EMPTY_PATH)
K_FSTATAT: Final = 14  # newfstatat: dirfd, path, statbuf, flags
K_VECTORED: Final = 15  # readv, writev: fd, iov, iovcnt at the file position; a blocking descriptor
K_VECTORED_POSITIONED: Final = 16  # preadv, pwritev: fd, iov, iovcnt, off >= 0; a seekable descriptor
K_VECTORED_V2: Final = 17  # preadv2, pwritev2: fd, iov, iovcnt, off >= -1 (-1: the file position), -, flags;
# a blocking, seekable descriptor (a pipe at its position is left to the host)
K_LIMIT: Final = 18
STAT_KINDS: Final = frozenset({K_STAT, K_LSTAT, K_FSTAT, K_FSTATAT})
"""The stat calls: STATX into the lane's buffer, converted into the caller's ``struct stat`` on completion."""

KINDS: Final[dict[str, int]] = {
    "stream": K_STREAM, "positioned": K_POSITIONED, "socket": K_SOCKET, "close": K_CLOSE, "fsync": K_FSYNC,
    "fdatasync": K_FDATASYNC, "openat": K_OPENAT, "accept": K_ACCEPT, "accept_plain": K_ACCEPT_PLAIN,
    "connect": K_CONNECT, "stat": K_STAT, "lstat": K_LSTAT, "fstat": K_FSTAT, "fstatat": K_FSTATAT,
    "vectored": K_VECTORED, "vectored_positioned": K_VECTORED_POSITIONED, "vectored_v2": K_VECTORED_V2,
}  # fmt: skip
"""Kind names (as the compiled lane exports them too) -> numbers."""

CALLS: Final[dict[str, tuple[U.IoringOp, str]]] = {
    "read": (U.IoringOp.READ, "stream"),
    "write": (U.IoringOp.WRITE, "stream"),
    "pread64": (U.IoringOp.READ, "positioned"),
    "pwrite64": (U.IoringOp.WRITE, "positioned"),
    "recvfrom": (U.IoringOp.RECV, "socket"),
    "sendto": (U.IoringOp.SEND, "socket"),
    "close": (U.IoringOp.CLOSE, "close"),
    "fsync": (U.IoringOp.FSYNC, "fsync"),
    "fdatasync": (U.IoringOp.FSYNC, "fdatasync"),
    "openat": (U.IoringOp.OPENAT, "openat"),
    "accept4": (U.IoringOp.ACCEPT, "accept"),
    "accept": (U.IoringOp.ACCEPT, "accept_plain"),
    "connect": (U.IoringOp.CONNECT, "connect"),
    "stat": (U.IoringOp.STATX, "stat"),
    "lstat": (U.IoringOp.STATX, "lstat"),
    "fstat": (U.IoringOp.STATX, "fstat"),
    "newfstatat": (U.IoringOp.STATX, "fstatat"),
    "readv": (U.IoringOp.READV, "vectored"),
    "writev": (U.IoringOp.WRITEV, "vectored"),
    "preadv": (U.IoringOp.READV, "vectored_positioned"),
    "pwritev": (U.IoringOp.WRITEV, "vectored_positioned"),
    "preadv2": (U.IoringOp.READV, "vectored_v2"),
    "pwritev2": (U.IoringOp.WRITEV, "vectored_v2"),
}
"""The syscalls the lanes translate: io_uring opcode and kind of call. The express lane takes the
reads and writes among them (:data:`ksvc_basic.express.EXPRESS_KINDS`). The stat calls are x86-64's
(the ``struct stat`` layout of ``ksvc_host/abi/linux.py``), as the dispatcher's translation is."""

NR_TABLE: Final = 512
"""Syscall numbers a lane's tables cover."""

_NR_LSEEK: Final = SYSCALLS["lseek"]
_NR_FCNTL: Final = SYSCALLS["fcntl"]
_F_GETFL: Final = 3
_U32: Final = 0xFFFF_FFFF
_U64: Final = (1 << 64) - 1
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1
_I64_MAX: Final = (1 << 63) - 1
_NONBLOCKING_KINDS: Final = frozenset({K_STREAM, K_SOCKET, K_ACCEPT, K_ACCEPT_PLAIN, K_CONNECT, K_VECTORED,
                                       K_VECTORED_V2})  # fmt: skip
_POSITIONED_KINDS: Final = frozenset({K_POSITIONED, K_VECTORED_POSITIONED})
_SEEKABLE_KINDS: Final = frozenset({K_POSITIONED, K_VECTORED_POSITIONED, K_VECTORED_V2})
_BUFFER_KINDS: Final = frozenset({K_STREAM, K_POSITIONED, K_SOCKET, K_VECTORED, K_VECTORED_POSITIONED})


def table(supported: frozenset[int], kinds: frozenset[int] | None = None) -> dict[int, tuple[int, int]]:
    """syscall number -> (opcode, kind) of :data:`CALLS` for the kernel's *supported* opcodes (and of
    *kinds* only, when given)."""
    out = {}
    for name, (opcode, kind_name) in CALLS.items():
        kind = KINDS[kind_name]
        if int(opcode) in supported and (kinds is None or kind in kinds):
            out[SYSCALLS[name]] = (int(opcode), kind)
    return out


def i32(v: int) -> int:
    """The low 32 bits of *v* as a signed int (what the SQE's fd field holds)."""
    v &= _U32
    return v - (1 << 32) if v > _I32_MAX else v


def i64(v: int) -> int:
    """The 64-bit word *v* as a signed int."""
    v &= _U64
    return v - (1 << 64) if v > _I64_MAX else v


def args_fit(kind: int, a: Sequence[int]) -> bool:
    """Do the argument words *a* of a call of *kind* fit its SQE, with the syscall's meaning?"""
    if kind in (K_STAT, K_LSTAT):  # a[0] is the path
        return True
    if not _I32_MIN <= i64(a[0]) <= _I32_MAX:
        return False
    if kind == K_VECTORED_V2:
        return a[2] <= _U32 and i64(a[3]) >= -1 and a[5] <= _U32
    if kind in _BUFFER_KINDS:
        if a[2] > _U32:
            return False
        if kind in _POSITIONED_KINDS and i64(a[3]) < 0:
            return False
        return not (kind == K_SOCKET and (a[4] or a[5] or a[3] > _U32))
    if kind == K_ACCEPT:
        return a[3] <= _U32
    if kind == K_CONNECT:
        return a[2] <= _U32
    if kind == K_FSTATAT:
        return a[3] <= _U32
    return True


def fd_suits(kind: int, fd: int) -> bool:
    """Would io_uring give exactly the syscall's answer on descriptor *fd*? (One or two syscalls.)"""
    if kind in _SEEKABLE_KINDS and native.syscall(_NR_LSEEK, fd, 0, os.SEEK_CUR) < 0:
        return False
    if kind in _NONBLOCKING_KINDS:
        fl = native.syscall(_NR_FCNTL, fd, _F_GETFL)
        return not (fl >= 0 and fl & os.O_NONBLOCK)
    return True


def sqe_fields(kind: int, a: Sequence[int]) -> tuple[int, int, int, int, int]:
    """The SQE fields of a call of *kind* (arguments *a*, passed by :func:`args_fit`):
    ``(fd, off, addr, len, op_flags)``."""
    off = addr = length = op_flags = 0
    if kind in (K_STREAM, K_VECTORED):
        addr, length, off = a[1], a[2] & _U32, _U64  # -1: at the file position (length: the iovec count)
    elif kind in _POSITIONED_KINDS:
        addr, length, off = a[1], a[2] & _U32, a[3]
    elif kind == K_VECTORED_V2:
        addr, length, off, op_flags = a[1], a[2] & _U32, a[3], a[5] & _U32
    elif kind == K_SOCKET:
        addr, length, op_flags = a[1], a[2] & _U32, a[3] & _U32
    elif kind == K_FDATASYNC:
        op_flags = U.IORING_FSYNC_DATASYNC
    elif kind == K_OPENAT:
        addr, op_flags, length = a[1], a[2] & _U32, a[3] & _U32
    elif kind == K_ACCEPT:
        addr, off, op_flags = a[1], a[2], a[3] & _U32  # off: the addrlen pointer
    elif kind == K_ACCEPT_PLAIN:
        addr, off = a[1], a[2]
    elif kind == K_CONNECT:
        addr, off = a[1], a[2] & _U32  # off: the address length
    return i32(a[0]), off, addr, length, op_flags


_EMPTY_PATH: Final = native.ffi.new("char[]", b"")
"""The path of an fstat's STATX (with ``AT_EMPTY_PATH``: the descriptor itself)."""


def stat_out_of(kind: int, a: Sequence[int]) -> int:
    """The caller's ``struct stat`` of a stat call of *kind* (arguments *a*)."""
    return a[2] if kind == K_FSTATAT else a[1]


def statx_fields(kind: int, a: Sequence[int]) -> tuple[int, int, int]:
    """``(dirfd, path, flags)`` of the STATX a stat call of *kind* becomes (its mask: ``STATX_BASIC_STATS``)."""
    if kind == K_FSTAT:
        return i32(a[0]), native.address_of(_EMPTY_PATH), lx.AT_EMPTY_PATH
    if kind == K_FSTATAT:
        return i32(a[0]), a[1], a[3] & _U32
    return lx.AT_FDCWD, a[0], lx.AT_SYMLINK_NOFOLLOW if kind == K_LSTAT else 0
