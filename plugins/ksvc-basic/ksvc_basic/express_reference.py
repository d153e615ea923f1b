"""The express lane's loops in plain Python: the reference ``express.c`` is checked against.

Each function does what its C namesake does, on the same memory, through
cffi pointers; ``KSVC_PURE_PYTHON=1`` selects these, and the tests run both.
x86-64 keeps stores in order and loads in order, and the interpreter does
no reordering of its own, so plain loads and stores stand in for C's
acquire and release.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

import cffi

from ksvc_basic.express_cdef import STRUCTS
from ksvc_basic.translation import K_POSITIONED, NR_TABLE, args_fit, fd_suits, sqe_fields
from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.io_uring import CQE_SIZE, SQE_SIZE, SQE_STRUCT, EnterFlag, SqRingFlag
from ksvc_host.abi.syscalls import SYSCALLS

ffi = cffi.FFI()
ffi.cdef(STRUCTS)

_U64 = struct.Struct("<Q")
_SUBMIT_WORDS = struct.Struct("<8Q")
_COMPLETE_WORDS = struct.Struct("<QqII")
_CQE_HEAD = struct.Struct("<Qi")  # a CQE's user_data and res
_FD_CACHE = 8
_NEED_WAKEUP = int(SqRingFlag.NEED_WAKEUP)
_SQ_WAKEUP = int(EnterFlag.SQ_WAKEUP)
_NR_LSEEK = SYSCALLS["lseek"]
_NR_FCNTL = SYSCALLS["fcntl"]
_NR_IO_URING_ENTER = SYSCALLS["io_uring_enter"]
_F_GETFL = 3


def _view(ptr: Any, size: int) -> Any:
    return ffi.buffer(ffi.cast("char *", ptr), size)


def _ring_view(ring_addr: Any, entries: int, entry_size: int) -> Any:
    return _view(ring_addr, L.RING_ENTRIES_OFFSET + entries * entry_size)


def _fd_ok(cache: dict[int, bool], fd: int, kind: int) -> bool:
    """:func:`~ksvc_basic.translation.fd_suits`, remembered for the descriptors of one submit."""
    if fd in cache:
        return cache[fd]
    ok = fd_suits(kind, fd)
    if len(cache) < _FD_CACHE:
        cache[fd] = ok
    return ok


def _enter(fd: int, n: int, flags: int) -> int:
    while True:
        r = native.syscall(_NR_IO_URING_ENTER, fd, n, 0, flags, 0, 0)
        if r != -errno.EINTR:
            return r


def express_submit(x: Any, max_take: int) -> int:
    """Turn the simple read/write entries at the submit ring's head into SQEs; see ``express.c``."""
    cache: dict[int, bool] = {}
    head = int(x.shead)
    sring = _ring_view(x.sring, x.smask + 1, L.SUBMIT_ENTRY_SIZE)
    avail = (_U64.unpack_from(sring, L.RING_TAIL_OFFSET)[0] - head) & 0xFFFF_FFFF_FFFF_FFFF
    sq_tail = int(x.sq_tail[0])
    backlog = (sq_tail - x.sq_head[0]) & 0xFFFF_FFFF  # SQEs the kernel has not consumed
    sq_free = x.sq_entries - backlog
    assist = x.a_ring_fd >= 0 and not x.ephemeral
    a_tail = int(x.a_sq_tail[0]) if assist else 0
    a_free = x.a_sq_entries - ((a_tail - x.a_sq_head[0]) & 0xFFFF_FFFF) if assist else 0
    x.taken = x.unsubmitted = x.error = x.a_taken = 0
    x.s_left = avail & 0xFFFF_FFFF
    if avail > x.smask + 1:
        return -errno.EUCLEAN
    limit = min(max_take, avail, x.room)
    sqes = _view(x.sqes, x.sq_entries * SQE_SIZE)
    a_sqes = _view(x.a_sqes, x.a_sq_entries * SQE_SIZE) if assist else sqes  # (unused without the ring)
    n = nm = na = 0
    while n < limit:
        corr, nr_flags, fd, addr, length, off, a4, a5 = _SUBMIT_WORDS.unpack_from(
            sring, L.RING_ENTRIES_OFFSET + ((head + n) & x.smask) * L.SUBMIT_ENTRY_SIZE
        )
        nr, flags = nr_flags & 0xFFFF_FFFF, nr_flags >> 32
        if flags or nr >= NR_TABLE or not x.kind[nr]:
            break
        kind = x.kind[nr]  # K_STREAM, K_POSITIONED or K_SOCKET (express.py builds the table)
        a = (fd, addr, length, off, a4, a5)
        if corr >= x.tag or not args_fit(kind, a):
            break
        if x.excl_lo < x.excl_hi and addr < x.excl_hi and addr + length > x.excl_lo:
            break
        pos = kind == K_POSITIONED
        assist_ok = pos and assist and na < a_free  # only positioned calls: a file read or write always ends
        to_assist = assist_ok and ((x.a_backlog and backlog + nm >= x.a_backlog) or nm >= sq_free)
        if not to_assist and nm >= sq_free:
            break
        sqe_fd, sqe_off, sqe_addr, sqe_len, op_flags = sqe_fields(kind, a)
        if not _fd_ok(cache, sqe_fd, kind):
            break
        fields = (x.opcode[nr], 0, 0, sqe_fd, sqe_off, sqe_addr, sqe_len, op_flags, x.tag | corr, 0, 0, 0, 0)
        if to_assist:
            idx = (a_tail + na) & x.a_sq_mask
            SQE_STRUCT.pack_into(a_sqes, idx * SQE_SIZE, *fields)
            x.a_sq_array[idx] = idx
            na += 1
        else:
            idx = (sq_tail + nm) & x.sq_mask
            SQE_STRUCT.pack_into(sqes, idx * SQE_SIZE, *fields)
            x.sq_array[idx] = idx
            nm += 1
        n += 1
    x.s_left = avail - n
    if not n:
        return 0
    x.shead = head + n
    _U64.pack_into(sring, L.RING_HEAD_OFFSET, x.shead)
    x.taken = n
    if nm:
        x.sq_tail[0] = (sq_tail + nm) & 0xFFFF_FFFF
        wake, enter_flags = True, 0
        if x.sqpoll:
            wake, enter_flags = bool(x.sq_flags[0] & _NEED_WAKEUP), _SQ_WAKEUP
        if wake:
            r = _enter(x.ring_fd, nm, enter_flags)
            if r in (-errno.EAGAIN, -errno.EBUSY):
                x.unsubmitted = nm
            elif r < 0:
                x.error, x.unsubmitted = r, nm
            elif not x.sqpoll and r < nm:
                x.unsubmitted = nm - r
    if na:
        x.a_sq_tail[0] = (a_tail + na) & 0xFFFF_FFFF
        x.a_taken = na
        x.a_total += na
    if na or (x.a_pending and assist):
        want = x.a_pending + na
        r = _enter(x.a_ring_fd, want, 0)  # runs them here, on this thread
        if r in (-errno.EAGAIN, -errno.EBUSY):
            x.a_pending = want
        elif r < 0:
            x.error, x.a_pending = r, want
        else:
            x.a_pending = want - r
    return n


def _reap_cq(x: Any, cq_head: Any, cq_tail: Any, cq_mask: int, cqes_ptr: Any, chead: int) -> tuple[int, int]:
    head = int(cq_head[0])
    tail = int(cq_tail[0])
    cring = _ring_view(x.cring, x.csize, L.COMPLETION_ENTRY_SIZE)
    cqes = _view(cqes_ptr, (cq_mask + 1) * CQE_SIZE)
    tag = int(x.tag)
    n = 0
    while head != tail:
        ud, res = _CQE_HEAD.unpack_from(cqes, (head & cq_mask) * CQE_SIZE)
        if ud & ~(tag - 1) != tag:
            break
        if x.ctail - chead >= x.csize:
            break
        slot = L.RING_ENTRIES_OFFSET + (x.ctail & (x.csize - 1)) * L.COMPLETION_ENTRY_SIZE
        _COMPLETE_WORDS.pack_into(cring, slot, ud & (tag - 1), res, 0, 0)
        x.ctail += 1
        head = (head + 1) & 0xFFFF_FFFF
        n += 1
    if n:
        cq_head[0] = head
    return n, (tail - head) & 0xFFFF_FFFF


def express_reap(x: Any) -> int:
    """Move the express CQEs at the head of the CQs into the completion ring; see ``express.c``."""
    cring = _ring_view(x.cring, x.csize, L.COMPLETION_ENTRY_SIZE)
    chead = _U64.unpack_from(cring, L.RING_HEAD_OFFSET)[0]
    n, left = _reap_cq(x, x.cq_head, x.cq_tail, x.cq_mask, x.cqes, chead)
    if x.a_ring_fd >= 0:
        n2, left2 = _reap_cq(x, x.a_cq_head, x.a_cq_tail, x.a_cq_mask, x.a_cqes, chead)
        n, left = n + n2, left + left2
    x.completed = n
    x.cq_left = left
    return n


def express_turn(x: Any, max_take: int) -> int:
    """One turn of the lane: reap, then submit; see ``express.c``."""
    express_reap(x)
    completed = x.completed
    n = express_submit(x, max_take)
    x.completed = completed
    return n
