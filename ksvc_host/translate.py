"""Tier 1: turning a syscall's raw arguments into an io_uring SQE.

The router sends a syscall *number* to io_uring; :func:`translate` decides
for *this call* whether io_uring gives exactly the direct call's answer, and
if so builds the SQE. ``None`` means it does not, and the dispatcher runs
the call on a worker instead, so results always equal the direct call's.
That happens for two reasons:

* the arguments: ``pread64`` with a negative offset, which io_uring would
  read as "current position"; a descriptor or length that does not fit the
  SQE's field (one small function per syscall, in :data:`TRANSLATORS`);
* the descriptors (:func:`waits_where_the_syscall_would_not`): a positioned
  call on a pipe or socket fails with ``ESPIPE`` while io_uring ignores the
  offset and waits; a call on an ``O_NONBLOCK`` descriptor returns ``EAGAIN``
  at once while io_uring waits for readiness.

These are the only rules. ksvc-basic's lanes carry the same rules for the
calls they take (``ksvc_basic/translation.h`` and ``translation.py``); the
differential tests check each against the direct syscall.

The old calls map to their ``*at`` opcodes. ``stat``, ``lstat``, ``fstat``
and ``newfstatat`` run as STATX into a private buffer and the result is
converted to ``struct stat`` and copied out (checked copy: a bad pointer
gives ``EFAULT``, as the kernel would).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from ksvc_host import native
from ksvc_host.abi import linux as lx
from ksvc_host.abi.io_uring import IORING_FSYNC_DATASYNC, IoringOp
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.traits.io_backend import SqeSpec

_NR_FCNTL = SYSCALLS["fcntl"]
_NR_LSEEK = SYSCALLS["lseek"]
_F_GETFL = 3
_O_NONBLOCK = os.O_NONBLOCK
_NONBLOCK_FDS: dict[int, tuple[int, ...]] = {
    SYSCALLS[name]: fds
    for name, fds in {
        "read": (0,), "write": (0,), "readv": (0,), "writev": (0,), "recvfrom": (0,), "sendto": (0,),
        "recvmsg": (0,), "sendmsg": (0,), "accept": (0,), "accept4": (0,), "connect": (0,),
        "splice": (0, 2), "tee": (0, 1), "preadv2": (0,), "pwritev2": (0,),
    }.items()
}  # fmt: skip
"""Calls whose blocking depends on ``O_NONBLOCK``: which of their arguments are descriptors."""
_POSITIONED: dict[int, tuple[int, int]] = {
    SYSCALLS[name]: (0, 3) for name in ("pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2")
}
"""Positioned calls: (descriptor argument, offset argument); an offset of -1 (the ``*v2`` calls) means
"the file position", which a stream has."""
_EMPTY_PATH = native.alloc(1)  # "" for fstat's AT_EMPTY_PATH; lives as long as the module
_EMPTY_PATH_ADDR = native.address_of(_EMPTY_PATH)
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


class Translation(NamedTuple):
    """An SQE for one syscall, plus what must happen around it."""

    sqe: SqeSpec
    finish: Callable[[int], int] | None = None
    """Maps the CQE result to the syscall's result (may copy data out)."""
    keep: Any = None
    """Memory that must stay alive until the CQE arrives."""
    full_length: int = -1
    """For reads and writes: the length that counts as success in a LINKED chain."""


Args = tuple[int, int, int, int, int, int]
Translator = Callable[[Args], Translation | None]


def _fits_u32(v: int) -> bool:
    return 0 <= v <= lx.U32_MAX


def _fd(v: int) -> int | None:
    return v if _I32_MIN <= v <= _I32_MAX else None


def _u64(v: int) -> int:
    return v & lx.U64_MASK


# -- reads and writes ---------------------------------------------------------


def _rw(op: IoringOp, *, positioned: bool) -> Translator:
    def translate(a: Args) -> Translation | None:
        fd = _fd(a[0])
        if fd is None or not _fits_u32(a[2]):
            return None
        if positioned and a[3] < 0:
            return None  # the kernel says EINVAL; io_uring would use the file position
        off = a[3] if positioned else -1
        return Translation(SqeSpec(op, fd, addr=_u64(a[1]), len=a[2], off=_u64(off)), full_length=a[2])

    return translate


def _rwv(op: IoringOp, *, positioned: bool, with_flags: bool) -> Translator:
    def translate(a: Args) -> Translation | None:
        fd = _fd(a[0])
        if fd is None or not _fits_u32(a[2]):
            return None
        off = a[3] if positioned else -1
        if positioned and not with_flags and off < 0:
            return None
        if with_flags and off < -1:
            return None
        flags = a[5] if with_flags else 0
        if not _fits_u32(flags):
            return None
        return Translation(SqeSpec(op, fd, addr=_u64(a[1]), len=a[2], off=_u64(off), op_flags=flags))

    return translate


# -- files and paths -------------------------------------------------------------


def _openat(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.OPENAT, a[0], addr=_u64(a[1]), len=a[3] & lx.U32_MAX, op_flags=a[2] & lx.U32_MAX)
    )


def _open(a: Args) -> Translation | None:
    return _openat((lx.AT_FDCWD, a[0], a[1], a[2], 0, 0))


def _creat(a: Args) -> Translation | None:
    return _openat((lx.AT_FDCWD, a[0], lx.O_CREAT | lx.O_WRONLY | lx.O_TRUNC, a[1], 0, 0))


def _openat2(a: Args) -> Translation | None:
    if not _fits_u32(a[3]):
        return None
    return Translation(SqeSpec(IoringOp.OPENAT2, a[0], addr=_u64(a[1]), len=a[3], off=_u64(a[2])))


def _close(a: Args) -> Translation | None:
    fd = _fd(a[0])
    return None if fd is None else Translation(SqeSpec(IoringOp.CLOSE, fd))


def _statx(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.STATX, a[0], addr=_u64(a[1]), len=a[3] & lx.U32_MAX, op_flags=a[2] & lx.U32_MAX,
                off=_u64(a[4]))
    )  # fmt: skip


def _stat_via_statx(dirfd: int, path: int, flags: int, statbuf: int) -> Translation:
    buf = native.alloc(lx.STATX_SIZE)
    addr = native.address_of(buf)

    def finish(res: int) -> int:
        if res < 0:
            return res
        return native.write_user(statbuf, lx.statx_to_stat(bytes(native.ffi.buffer(buf, lx.STATX_SIZE))))

    sqe = SqeSpec(IoringOp.STATX, dirfd, addr=_u64(path), len=lx.STATX_BASIC_STATS, op_flags=flags, off=addr)
    return Translation(sqe, finish, buf)


def _stat(a: Args) -> Translation | None:
    return _stat_via_statx(lx.AT_FDCWD, a[0], 0, a[1])


def _lstat(a: Args) -> Translation | None:
    return _stat_via_statx(lx.AT_FDCWD, a[0], lx.AT_SYMLINK_NOFOLLOW, a[1])


def _fstat(a: Args) -> Translation | None:
    fd = _fd(a[0])
    return None if fd is None else _stat_via_statx(fd, _EMPTY_PATH_ADDR, lx.AT_EMPTY_PATH, a[1])


def _newfstatat(a: Args) -> Translation | None:
    return _stat_via_statx(a[0], a[1], a[3] & lx.U32_MAX, a[2])


def _fsync(datasync: bool) -> Translator:
    def translate(a: Args) -> Translation | None:
        fd = _fd(a[0])
        flags = IORING_FSYNC_DATASYNC if datasync else 0
        return None if fd is None else Translation(SqeSpec(IoringOp.FSYNC, fd, op_flags=flags))

    return translate


def _sync_file_range(a: Args) -> Translation | None:
    if a[1] < 0 or not _fits_u32(a[2]):
        return None
    return Translation(SqeSpec(IoringOp.SYNC_FILE_RANGE, a[0], off=_u64(a[1]), len=a[2], op_flags=a[3] & lx.U32_MAX))


def _fallocate(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.FALLOCATE, a[0], len=a[1] & lx.U32_MAX, off=_u64(a[2]), addr=_u64(a[3])))


def _ftruncate(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.FTRUNCATE, a[0], off=_u64(a[1])))


def _renameat2(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.RENAMEAT, a[0], addr=_u64(a[1]), len=a[2] & lx.U32_MAX, off=_u64(a[3]),
                op_flags=a[4] & lx.U32_MAX)
    )  # fmt: skip


def _unlinkat(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.UNLINKAT, a[0], addr=_u64(a[1]), op_flags=a[2] & lx.U32_MAX))


def _mkdirat(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.MKDIRAT, a[0], addr=_u64(a[1]), len=a[2] & lx.U32_MAX))


def _symlinkat(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.SYMLINKAT, a[1], addr=_u64(a[0]), off=_u64(a[2])))


def _linkat(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.LINKAT, a[0], addr=_u64(a[1]), len=a[2] & lx.U32_MAX, off=_u64(a[3]),
                op_flags=a[4] & lx.U32_MAX)
    )  # fmt: skip


def _fadvise(a: Args) -> Translation | None:
    if not _fits_u32(a[2]):
        return None
    return Translation(SqeSpec(IoringOp.FADVISE, a[0], off=_u64(a[1]), len=a[2], op_flags=a[3] & lx.U32_MAX))


def _madvise(a: Args) -> Translation | None:
    if not _fits_u32(a[1]):
        return None
    return Translation(SqeSpec(IoringOp.MADVISE, addr=_u64(a[0]), len=a[1], op_flags=a[2] & lx.U32_MAX))


def _setxattr(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.SETXATTR, addr=_u64(a[1]), off=_u64(a[2]), addr3=_u64(a[0]), len=a[3] & lx.U32_MAX,
                op_flags=a[4] & lx.U32_MAX)
    )  # fmt: skip


def _fsetxattr(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.FSETXATTR, a[0], addr=_u64(a[1]), off=_u64(a[2]), len=a[3] & lx.U32_MAX,
                op_flags=a[4] & lx.U32_MAX)
    )  # fmt: skip


def _getxattr(a: Args) -> Translation | None:
    return Translation(
        SqeSpec(IoringOp.GETXATTR, addr=_u64(a[1]), off=_u64(a[2]), addr3=_u64(a[0]), len=a[3] & lx.U32_MAX)
    )


def _fgetxattr(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.FGETXATTR, a[0], addr=_u64(a[1]), off=_u64(a[2]), len=a[3] & lx.U32_MAX))


# -- sockets -------------------------------------------------------------------------


def _socket(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.SOCKET, a[0], off=_u64(a[1]), len=a[2] & lx.U32_MAX))


def _bind(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.BIND, a[0], addr=_u64(a[1]), off=a[2] & lx.U32_MAX))


def _listen(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.LISTEN, a[0], len=a[1] & lx.U32_MAX))


def _accept4(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.ACCEPT, a[0], addr=_u64(a[1]), off=_u64(a[2]), op_flags=a[3] & lx.U32_MAX))


def _accept(a: Args) -> Translation | None:
    return _accept4((a[0], a[1], a[2], 0, 0, 0))


def _connect(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.CONNECT, a[0], addr=_u64(a[1]), off=a[2] & lx.U32_MAX))


def _sendto(a: Args) -> Translation | None:
    if a[4] or not _fits_u32(a[2]):  # a destination address: the worker keeps exact semantics
        return None
    return Translation(SqeSpec(IoringOp.SEND, a[0], addr=_u64(a[1]), len=a[2], op_flags=a[3] & lx.U32_MAX))


def _recvfrom(a: Args) -> Translation | None:
    if a[4] or not _fits_u32(a[2]):  # the source address is not reported by IORING_OP_RECV
        return None
    return Translation(SqeSpec(IoringOp.RECV, a[0], addr=_u64(a[1]), len=a[2], op_flags=a[3] & lx.U32_MAX))


def _msg(op: IoringOp) -> Translator:
    def translate(a: Args) -> Translation | None:
        return Translation(SqeSpec(op, a[0], addr=_u64(a[1]), op_flags=a[2] & lx.U32_MAX))

    return translate


def _shutdown(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.SHUTDOWN, a[0], len=a[1] & lx.U32_MAX))


# -- pipes, epoll, processes ------------------------------------------------------------


def _splice(a: Args) -> Translation | None:
    # Offset pointers are read and written back by the syscall; keep that exact on a worker.
    if a[1] or a[3] or not _fits_u32(a[4]):
        return None
    return Translation(
        SqeSpec(IoringOp.SPLICE, a[2], off=lx.U64_MASK, addr=lx.U64_MASK, file_index=a[0] & lx.U32_MAX,
                len=a[4], op_flags=a[5] & lx.U32_MAX)
    )  # fmt: skip


def _tee(a: Args) -> Translation | None:
    if not _fits_u32(a[2]):
        return None
    return Translation(SqeSpec(IoringOp.TEE, a[1], file_index=a[0] & lx.U32_MAX, len=a[2], op_flags=a[3] & lx.U32_MAX))


def _pipe2(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.PIPE, addr=_u64(a[0]), op_flags=a[1] & lx.U32_MAX))


def _epoll_ctl(a: Args) -> Translation | None:
    return Translation(SqeSpec(IoringOp.EPOLL_CTL, a[0], len=a[1] & lx.U32_MAX, off=_u64(a[2]), addr=_u64(a[3])))


def _waitid(a: Args) -> Translation | None:
    if a[4]:  # rusage is not reported by IORING_OP_WAITID
        return None
    return Translation(
        SqeSpec(IoringOp.WAITID, a[1], len=a[0] & lx.U32_MAX, file_index=a[3] & lx.U32_MAX, off=_u64(a[2]))
    )


_BY_NAME: dict[str, Translator] = {
    "read": _rw(IoringOp.READ, positioned=False),
    "write": _rw(IoringOp.WRITE, positioned=False),
    "pread64": _rw(IoringOp.READ, positioned=True),
    "pwrite64": _rw(IoringOp.WRITE, positioned=True),
    "readv": _rwv(IoringOp.READV, positioned=False, with_flags=False),
    "writev": _rwv(IoringOp.WRITEV, positioned=False, with_flags=False),
    "preadv": _rwv(IoringOp.READV, positioned=True, with_flags=False),
    "pwritev": _rwv(IoringOp.WRITEV, positioned=True, with_flags=False),
    "preadv2": _rwv(IoringOp.READV, positioned=True, with_flags=True),
    "pwritev2": _rwv(IoringOp.WRITEV, positioned=True, with_flags=True),
    "open": _open,
    "creat": _creat,
    "openat": _openat,
    "openat2": _openat2,
    "close": _close,
    "statx": _statx,
    "stat": _stat,
    "lstat": _lstat,
    "fstat": _fstat,
    "newfstatat": _newfstatat,
    "fsync": _fsync(False),
    "fdatasync": _fsync(True),
    "sync_file_range": _sync_file_range,
    "fallocate": _fallocate,
    "ftruncate": _ftruncate,
    "rename": lambda a: _renameat2((lx.AT_FDCWD, a[0], lx.AT_FDCWD, a[1], 0, 0)),
    "renameat": lambda a: _renameat2((a[0], a[1], a[2], a[3], 0, 0)),
    "renameat2": _renameat2,
    "unlink": lambda a: _unlinkat((lx.AT_FDCWD, a[0], 0, 0, 0, 0)),
    "rmdir": lambda a: _unlinkat((lx.AT_FDCWD, a[0], lx.AT_REMOVEDIR, 0, 0, 0)),
    "unlinkat": _unlinkat,
    "mkdir": lambda a: _mkdirat((lx.AT_FDCWD, a[0], a[1], 0, 0, 0)),
    "mkdirat": _mkdirat,
    "symlink": lambda a: _symlinkat((a[0], lx.AT_FDCWD, a[1], 0, 0, 0)),
    "symlinkat": _symlinkat,
    "link": lambda a: _linkat((lx.AT_FDCWD, a[0], lx.AT_FDCWD, a[1], 0, 0)),
    "linkat": _linkat,
    "fadvise64": _fadvise,
    "madvise": _madvise,
    "setxattr": _setxattr,
    "getxattr": _getxattr,
    "fsetxattr": _fsetxattr,
    "fgetxattr": _fgetxattr,
    "socket": _socket,
    "bind": _bind,
    "listen": _listen,
    "accept": _accept,
    "accept4": _accept4,
    "connect": _connect,
    "sendto": _sendto,
    "recvfrom": _recvfrom,
    "sendmsg": _msg(IoringOp.SENDMSG),
    "recvmsg": _msg(IoringOp.RECVMSG),
    "shutdown": _shutdown,
    "splice": _splice,
    "tee": _tee,
    "pipe": lambda a: _pipe2((a[0], 0, 0, 0, 0, 0)),
    "pipe2": _pipe2,
    "epoll_ctl": _epoll_ctl,
    "waitid": _waitid,
}

TRANSLATORS: dict[int, Translator] = {SYSCALLS[name]: fn for name, fn in _BY_NAME.items()}
"""Syscall number -> translator, for every syscall in :data:`ksvc_host.routing.OPCODE_FOR`."""


def waits_where_the_syscall_would_not(nr: int, args: tuple[int, ...]) -> bool:
    """True when io_uring would wait on these descriptors but the syscall answers at once (see the top)."""
    positioned = _POSITIONED.get(nr)
    if positioned is not None and native.to_signed(args[positioned[1]]) != -1:
        fd = native.to_signed(args[positioned[0]]) & 0xFFFF_FFFF
        return native.syscall(_NR_LSEEK, fd, 0, os.SEEK_CUR) < 0  # not seekable: ESPIPE from the kernel
    for i in _NONBLOCK_FDS.get(nr, ()):
        flags = native.syscall(_NR_FCNTL, native.to_signed(args[i]) & 0xFFFF_FFFF, _F_GETFL)
        if flags >= 0 and flags & _O_NONBLOCK:
            return True
    return False


def sqe_for(nr: int, args: tuple[int, ...]) -> Translation | None:
    """The SQE for syscall *nr* with raw u64 *args*, judging the arguments only (``None``: no exact SQE).

    For requests whose point is to wait for readiness (a multishot accept);
    every other call goes through :func:`translate`."""
    fn = TRANSLATORS.get(nr)
    if fn is None:
        return None
    signed = tuple(native.to_signed(x) for x in args)
    tr = fn(signed)  # type: ignore[arg-type]
    if tr is None or not _I32_MIN <= tr.sqe.fd <= _I32_MAX:
        return None
    return tr


def translate(nr: int, args: tuple[int, ...]) -> Translation | None:
    """The SQE for this call of syscall *nr* (raw u64 *args*), or ``None`` to run it on a worker."""
    if waits_where_the_syscall_would_not(nr, args):
        return None
    return sqe_for(nr, args)
