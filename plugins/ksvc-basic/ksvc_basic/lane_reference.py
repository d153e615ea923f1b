"""The thread lane in plain Python: the specification ``ksvc_basic/lane.c`` is checked against.

``Lane`` here has the constructor, methods, getters, argument conventions,
return values, exceptions and callback order of ``ksvc_basic._lane.Lane``,
and the same tests run against both (``tests/conftest.py``: ``lane_impl``).
It keeps lane.c's data flow so that flow has a readable statement: a call
becomes a 64-byte submit entry on the lane's own submit ring, a turn
translates entries to SQEs on the lane's own io_uring (``ksvc_basic.uring``)
and enters once for the batch, CQEs become 32-byte completion entries on the
lane's completion ring, and the result is built from the completion.

Where lane.c does something only for speed the twin does the simple thing
with the same result: a read goes into a scratch buffer and is copied into
new bytes (lane.c reads into the bytes object itself).

Signals: a blocking call waits in ``io_uring_enter`` in 50 ms slices with the
GIL released; Python runs a signal's handler as soon as the wait returns.
When the handler raises, the entry is cancelled and its answer awaited (at
most ``settle_s``) before the exception propagates, as in lane.c; an
exception from a second handler during that wait is dropped (lane.c's would
run after the call returns).
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import threading
import time
from typing import Any, Final

import cffi

from ksvc_basic import waiter_reference
from ksvc_basic.translation import (
    K_ACCEPT,
    K_LIMIT,
    K_NONE,
    K_POSITIONED,
    K_SOCKET,
    K_STREAM,
    NR_TABLE,
    STAT_KINDS,
    args_fit,
    fd_suits,
    sqe_fields,
    stat_out_of,
    statx_fields,
)
from ksvc_basic.translation import KINDS as KINDS  # part of the module interface, as lane.c exports it
from ksvc_basic.translation import i32 as _i32
from ksvc_basic.uring import IoUring
from ksvc_basic.waiter_reference import Waiter as Waiter  # part of the module interface, as lane.c exports it
from ksvc_host import forksafety, native
from ksvc_host.abi import io_uring as U
from ksvc_host.abi import layout as L
from ksvc_host.abi import linux as lx
from ksvc_host.traits.io_backend import SqeSpec

ffi = cffi.FFI()
ffi.cdef(
    """
    struct lane_timespec { int64_t tv_sec; int64_t tv_nsec; };
    struct lane_getevents_arg { uint64_t sigmask; uint32_t sigmask_sz; uint32_t min_wait_usec; uint64_t ts; };
    struct lane_buf { uint64_t addr; uint32_t len; uint16_t bid; uint16_t resv; };
    struct lane_buf_reg { uint64_t ring_addr; uint32_t ring_entries; uint16_t bgid; uint16_t flags;
                          uint64_t resv[3]; };
    """
)
_scratch = ffi.new_allocator(should_clear_after_alloc=False)  # the kernel overwrites what a read returns

LANE_SLOTS: Final = 256  # default entries in flight at once
MAX_SLOTS: Final = 1 << 16  # a token keeps the slot in its low GEN_SHIFT bits
MANY_CHUNK: Final = 256  # read_many: entries per chunk at most
TURN_FLUSH: Final = 16  # a turn submits what its callbacks started once this many are queued
TURN_BUDGET: Final = 256  # completions after which a turn ends, so the event loop's other callbacks run
PBUF_COUNT: Final = 512  # provided buffers of a lane's receive loops (a power of two)
PBUF_SIZE: Final = 16384
PBUF_GROUP: Final = 0
WAIT_SLICE_NS: Final = 50_000_000  # a blocked caller looks at signals and the closing deadline this often
CANCEL_TAG: Final = 1 << 62  # user_data of the lane's own cancel requests
GEN_SHIFT: Final = 16
_SLOT_MASK: Final = (1 << GEN_SHIFT) - 1

# Flags of a submit entry (lane-internal, in the entry's flags word).
ENTRY_POLL_FIRST: Final = 1 << 0  # a receive that arms its poll before trying
ENTRY_MULTISHOT: Final = 1 << 1  # a multishot receive into the lane's provided buffers
ENTRY_ACCEPTS: Final = 1 << 2  # a multishot accept
ENTRY_PREBUILT: Final = 1 << 3  # the caller built the SQE: args[0] points at its 64 bytes

# The kernel's io_uring ABI, as plain ints (the turn's paths are hot).
OP_FSYNC: Final = int(U.IoringOp.FSYNC)
OP_ACCEPT: Final = int(U.IoringOp.ACCEPT)
OP_ASYNC_CANCEL: Final = int(U.IoringOp.ASYNC_CANCEL)
OP_CONNECT: Final = int(U.IoringOp.CONNECT)
OP_OPENAT: Final = int(U.IoringOp.OPENAT)
OP_CLOSE: Final = int(U.IoringOp.CLOSE)
OP_READ: Final = int(U.IoringOp.READ)
OP_WRITE: Final = int(U.IoringOp.WRITE)
OP_SEND: Final = int(U.IoringOp.SEND)
OP_RECV: Final = int(U.IoringOp.RECV)
SETUP_CLAMP: Final = int(U.SetupFlag.CLAMP)
SETUP_SUBMIT_ALL: Final = int(U.SetupFlag.SUBMIT_ALL)
SETUP_COOP_TASKRUN: Final = int(U.SetupFlag.COOP_TASKRUN)
SETUP_SINGLE_ISSUER: Final = int(U.SetupFlag.SINGLE_ISSUER)
SETUP_DEFER_TASKRUN: Final = int(U.SetupFlag.DEFER_TASKRUN)
FEAT_SINGLE_MMAP: Final = int(U.Feature.SINGLE_MMAP)
FEAT_EXT_ARG: Final = int(U.Feature.EXT_ARG)
ENTER_GETEVENTS: Final = int(U.EnterFlag.GETEVENTS)
ENTER_EXT_ARG: Final = int(U.EnterFlag.EXT_ARG)
REGISTER_EVENTFD: Final = int(U.Register.REGISTER_EVENTFD)
REGISTER_PBUF_RING: Final = int(U.Register.REGISTER_PBUF_RING)
FSYNC_DATASYNC: Final = U.IORING_FSYNC_DATASYNC
RECVSEND_POLL_FIRST: Final = U.IORING_RECVSEND_POLL_FIRST
RECV_MULTISHOT: Final = U.IORING_RECV_MULTISHOT
ACCEPT_MULTISHOT: Final = U.IORING_ACCEPT_MULTISHOT
SQE_BUFFER_SELECT: Final = int(U.SqeFlag.BUFFER_SELECT)
CQE_F_BUFFER: Final = int(U.CqeFlag.BUFFER)
CQE_F_MORE: Final = int(U.CqeFlag.MORE)
CQE_BUFFER_SHIFT: Final = U.CQE_BUFFER_SHIFT

_U32: Final = 0xFFFF_FFFF
_U64: Final = (1 << 64) - 1
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_MAX_RW: Final = 0x7FFF_F000  # the most one read or write moves (Linux's MAX_RW_COUNT)
_SUBMIT = L.SUBMIT_ENTRY  # corr u64, nr u32, flags u32, args u64[6]
_COMPLETE = L.COMPLETION_ENTRY  # corr u64, result i64, flags u32, pad u32 (in a 32-byte slot)
_SUBMIT_SIZE: Final = L.SUBMIT_ENTRY_SIZE
_COMPLETE_SIZE: Final = L.COMPLETION_ENTRY_SIZE

CONSTANTS: Final[dict[str, int]] = {
    "IORING_OP_FSYNC": OP_FSYNC, "IORING_OP_ACCEPT": OP_ACCEPT, "IORING_OP_ASYNC_CANCEL": OP_ASYNC_CANCEL,
    "IORING_OP_CONNECT": OP_CONNECT, "IORING_OP_OPENAT": OP_OPENAT, "IORING_OP_CLOSE": OP_CLOSE,
    "IORING_OP_READ": OP_READ, "IORING_OP_WRITE": OP_WRITE, "IORING_OP_SEND": OP_SEND, "IORING_OP_RECV": OP_RECV,
    "IORING_SETUP_SINGLE_ISSUER": SETUP_SINGLE_ISSUER, "IORING_SETUP_DEFER_TASKRUN": SETUP_DEFER_TASKRUN,
    "IORING_SETUP_COOP_TASKRUN": SETUP_COOP_TASKRUN, "IORING_SETUP_SUBMIT_ALL": SETUP_SUBMIT_ALL,
    "IORING_SETUP_CLAMP": SETUP_CLAMP, "IORING_FEAT_SINGLE_MMAP": FEAT_SINGLE_MMAP,
    "IORING_OFF_CQ_RING": U.OFF_CQ_RING, "IORING_OFF_SQES": U.OFF_SQES,
    "IORING_ENTER_GETEVENTS": ENTER_GETEVENTS, "IORING_ENTER_EXT_ARG": ENTER_EXT_ARG,
    "IORING_REGISTER_EVENTFD": REGISTER_EVENTFD, "IORING_FEAT_EXT_ARG": FEAT_EXT_ARG,
    "IORING_FSYNC_DATASYNC": FSYNC_DATASYNC, "NR_IO_URING_SETUP": U.NR_IO_URING_SETUP,
    "NR_IO_URING_ENTER": U.NR_IO_URING_ENTER, "NR_IO_URING_REGISTER": U.NR_IO_URING_REGISTER,
    "SQE_SIZE": 64, "CQE_SIZE": 16, "PARAMS_SIZE": 120, "SUBMIT_SIZE": _SUBMIT_SIZE,
    "COMPLETE_SIZE": _COMPLETE_SIZE, "SLOTS": LANE_SLOTS, "TURN_FLUSH": TURN_FLUSH, "TURN_BUDGET": TURN_BUDGET,
}  # fmt: skip
"""The ABI values the lane is built on (lane.c exports the same table; tests pin both)."""

# A number per thread that no other thread of the process ever gets: idents are reused once a thread exits,
# and the kernel ties a single-issuer ring to its first submitter for good.
_serials = itertools.count(1)
_thread = threading.local()


def thread_serial() -> int:
    """The calling thread's serial number."""
    try:
        return int(_thread.serial)
    except AttributeError:
        _thread.serial = next(_serials)
        return int(_thread.serial)


def _as_long(v: Any) -> int | None:
    """An int that fits a C long (64 bits), or None (lane.c clears the overflow and declines)."""
    if not isinstance(v, int) or not _I64_MIN <= v <= _I64_MAX:
        return None
    return int(v)


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))  # the errno's subclass, as PyObject_CallFunction(OSError) gives


class _Unraisable:
    """What ``sys.unraisablehook`` receives (PyErr_WriteUnraisable in lane.c)."""

    def __init__(self, exc: BaseException, obj: Any) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg: str | None = None
        self.object = obj


def _unraisable(exc: BaseException, obj: Any) -> None:
    sys.unraisablehook(_Unraisable(exc, obj))  # type: ignore[arg-type]


_IN_FLIGHT: dict[int, list[_Slot]] = {}
"""The slots of each lane with entries in flight. Reachable from this module, a slot and the caller's
buffer it holds are never garbage while the kernel may use them, as lane.c's untracked references are
not: the collector clearing a memoryview that an entry's view still exports crashes the interpreter."""
_LANE_SERIALS = itertools.count()


class _Slot:
    """One entry in flight (lane.c's struct slot)."""

    __slots__ = (
        "fut", "obj", "orphan", "gen", "len", "reads", "busy", "stream", "view", "ints",
        "call", "loop", "stopping", "cancelled", "multi", "quiet", "accepts", "group", "left", "results", "fd",
        "pos", "nr", "end", "answer", "stat_out", "settles",
    )  # fmt: skip

    def __init__(self) -> None:
        self.fut: Any = None  # the future, or the callable of a callback entry
        self.obj: Any = None  # the scratch buffer a read goes into, or what the caller asked to keep
        self.orphan: Any = None  # a multishot receive's on_data exception, for on_end once the series ends
        self.gen = 0
        self.len = 0
        self.reads = False
        self.busy = False
        self.stream = False
        self.view: Any = None  # the buffer a write sends from
        self.ints = False  # deliver the raw result (-errno included)
        self.call = False  # fut is a callable
        self.loop = False  # a receive loop
        self.stopping = False
        self.cancelled = False
        self.multi = False  # a multishot receive into provided buffers
        self.quiet = False  # a send whose callback runs only when short, failed or watched
        self.accepts = False  # a multishot accept loop
        self.group = 0  # start_read_many: the leader's slot + 1
        self.left = 0
        self.results: list[Any] | None = None
        self.fd = 0
        self.pos = -1
        self.nr = 0
        self.end: Any = None
        self.answer: int | None = None  # a blocking entry's result once found (kept across an interrupt)
        self.stat_out = 0  # a stat call: the caller's struct stat, filled from the slot's statx buffer
        self.settles = False  # its waiter's cancel() asked the kernel to cancel it: a failure ends it cancelled


class Lane:
    """A channel owned by one thread, with an io_uring of its own (see the module docstring)."""

    def __init__(self, entries: int = 64, setup_flags: int = 0, settle_s: float = 1.0, slots: int = LANE_SLOTS):
        for v in (entries, setup_flags, slots):
            if not isinstance(v, int):
                raise TypeError(f"an integer is required, not {type(v).__name__}")
        entries, setup_flags, nslots = entries & _U32, setup_flags & _U32, slots & _U32
        settle = float(settle_s)
        if nslots < 1 or nslots > MAX_SLOTS or nslots & (nslots - 1):
            raise ValueError(f"slots must be a power of two from 1 to {MAX_SLOTS}, not {nslots}")
        self._ring: IoUring | None = None
        self._dead = True
        self._refusing = False
        self._owner = thread_serial()
        self._setup_flags = 0
        self._features = 0
        self._poll_first = False
        self._pbuf_state = 0  # 0: not tried, 1: registered, -1: none (single receives)
        self._pbuf_ring: forksafety.SharedMapping | None = None
        self._pbufs: forksafety.SharedMapping | None = None
        self._pbuf_entries: Any = None
        self._pbuf_base = 0
        self._pbuf_tail = 0
        self._unsubmitted = 0
        self._nslots = nslots
        self._mask = nslots - 1
        self._sring = bytearray(nslots * _SUBMIT_SIZE)
        self._s_head = self._s_tail = 0
        self._cring = bytearray(nslots * _COMPLETE_SIZE)
        self._c_head = self._c_tail = 0
        self._kind = [K_NONE] * NR_TABLE
        self._opcode = [0] * NR_TABLE
        self._recv_nr = self._send_nr = self._accept_nr = NR_TABLE
        self._slots = [_Slot() for _ in range(nslots)]
        self._statx_bufs: Any = None  # stat calls: a struct statx per slot, made on the first
        self._free = list(range(nslots - 1, -1, -1))  # slot 0 is taken first, as in lane.c
        self._inflight = 0
        self._serial = next(_LANE_SERIALS)
        self._settle_ns = int(settle * 1e9)
        self._deadline_ns = 0
        self._busy_blocking = False
        self._in_turn = False
        self._unfinished = False
        self._late: tuple[int, int, bytes | None] | None = None
        self._entries = 0
        self._enters = 0
        self._ts = ffi.new("struct lane_timespec *")
        self._arg = ffi.new("struct lane_getevents_arg *")
        self._arg.ts = int(ffi.cast("uintptr_t", self._ts))
        self._arg_addr = int(ffi.cast("uintptr_t", self._arg))
        self._setup(entries, setup_flags)
        self._dead = False

    def _setup(self, entries: int, flags: int) -> None:
        # The kernel may lack some of the flags asked for: drop the newest first.
        fallbacks = (0, SETUP_DEFER_TASKRUN, SETUP_DEFER_TASKRUN | SETUP_SINGLE_ISSUER,
                     SETUP_DEFER_TASKRUN | SETUP_SINGLE_ISSUER | SETUP_COOP_TASKRUN | SETUP_SUBMIT_ALL)  # fmt: skip
        err = errno.EINVAL
        for drop in fallbacks:
            asked = (flags & ~drop) | SETUP_CLAMP
            try:
                ring = IoUring(entries, flags=asked)
            except OSError as exc:
                err = exc.errno or errno.EINVAL
                if err != errno.EINVAL:
                    break
                continue
            self._ring = ring
            self._setup_flags = ring.flags & ~SETUP_CLAMP
            self._poll_first = bool(self._setup_flags & SETUP_SINGLE_ISSUER)
            self._features = ring.features
            return
        raise _oserror(err)

    # The ring -------------------------------------------------------------------------------

    def _enter(self, submit: int, min_complete: int, flags: int, wait_ns: int) -> int:
        ring = self._ring
        assert ring is not None
        ring._sq_tail_p[0] = ring._sq_tail  # SQEs written so far become the kernel's
        self._enters += 1
        if wait_ns >= 0 and self._features & FEAT_EXT_ARG:
            self._ts.tv_sec, self._ts.tv_nsec = divmod(wait_ns, 1_000_000_000)
            return native.syscall(U.NR_IO_URING_ENTER, ring.fd, submit, min_complete, flags | ENTER_EXT_ARG,
                                  self._arg_addr, ffi.sizeof("struct lane_getevents_arg"))  # fmt: skip
        return native.syscall(U.NR_IO_URING_ENTER, ring.fd, submit, min_complete, flags, 0, 0)

    def _sent(self, r: int) -> None:
        # SQEs the kernel took; without SQPOLL its sq head says so exactly, even when a signal handler's
        # exception lands between an enter and this line.
        ring = self._ring
        if ring is not None:
            self._unsubmitted = (ring._sq_tail - int(ring._sq_head_p[0])) & _U32

    def _push_sqe(self, user_data: int, spec: SqeSpec) -> bool:
        ring = self._ring
        assert ring is not None
        if not ring.prep(user_data, spec):
            return False
        self._unsubmitted += 1
        return True

    def _translate(self, corr: int, nr: int, eflags: int, a: tuple[int, ...]) -> SqeSpec:
        if eflags & ENTRY_PREBUILT:  # the slot holds the SQE's bytes until the completion
            return SqeSpec.from_bytes(ffi.buffer(ffi.cast("char *", a[0]), U.SQE_SIZE)[:])
        nr %= NR_TABLE
        ioprio = RECVSEND_POLL_FIRST if eflags & ENTRY_POLL_FIRST else 0
        sqe_flags = 0
        if eflags & ENTRY_MULTISHOT:
            ioprio, sqe_flags = RECV_MULTISHOT, SQE_BUFFER_SELECT
        if eflags & ENTRY_ACCEPTS:
            ioprio = ACCEPT_MULTISHOT
        kind = self._kind[nr]
        if kind in STAT_KINDS:  # STATX into the slot's buffer; _reap converts it for the caller
            i = corr & _SLOT_MASK & self._mask
            self._slots[i].stat_out = stat_out_of(kind, a)
            dirfd, path, flags = statx_fields(kind, a)
            buf = int(ffi.cast("uintptr_t", self._statx_bufs)) + i * lx.STATX_SIZE
            return SqeSpec(self._opcode[nr], dirfd, off=buf, addr=path, len=lx.STATX_BASIC_STATS, op_flags=flags)
        fd, off, addr, length, op_flags = sqe_fields(kind, a)
        return SqeSpec(self._opcode[nr], fd, off=off, addr=addr, len=length, op_flags=op_flags,
                       flags=sqe_flags, ioprio=ioprio, buf_index=PBUF_GROUP)  # fmt: skip

    def _submit(self) -> int:
        """Submit entries into SQEs, then enter once for the batch (never waiting)."""
        while self._s_head != self._s_tail:
            corr, nr, eflags, *a = _SUBMIT.unpack_from(self._sring, (self._s_head & self._mask) * _SUBMIT_SIZE)
            if not self._push_sqe(corr, self._translate(corr, nr, eflags, tuple(a))):
                break  # SQ full: the rest wait for the next turn
            self._s_head += 1
        r = 0
        if self._unsubmitted:
            r = self._enter(self._unsubmitted, 0, ENTER_GETEVENTS, -1)
            self._sent(r)
        return r

    def _reap(self) -> int:
        """CQEs into completion entries (the lane's own cancel requests answer nobody)."""
        ring = self._ring
        assert ring is not None
        head, tail = int(ring._cq_head_p[0]), int(ring._cq_tail_p[0])
        cqes, mask = ring._cqes, ring._cq_mask
        n = 0
        while head != tail and self._c_tail - self._c_head < self._nslots:
            c = cqes[head & mask]
            ud, res, flags = int(c.user_data), int(c.res), int(c.flags)
            head = (head + 1) & _U32
            if ud & CANCEL_TAG:
                continue
            i = ud & _SLOT_MASK
            if (self._statx_bufs is not None and i < self._nslots and self._slots[i].stat_out
                    and self._slots[i].gen == (ud >> GEN_SHIFT) & _U32):  # fmt: skip
                if res == 0:
                    statx = bytes(ffi.buffer(self._statx_bufs + i * lx.STATX_SIZE, lx.STATX_SIZE))
                    res = native.write_user(self._slots[i].stat_out, lx.statx_to_stat(statx))  # or -EFAULT
                self._slots[i].stat_out = 0
            _COMPLETE.pack_into(self._cring, (self._c_tail & self._mask) * _COMPLETE_SIZE, ud, res, flags, 0)
            self._c_tail += 1
            n += 1
        ring._cq_head_p[0] = head
        return n

    def _take_completion(self) -> tuple[int, int, int]:
        corr, res, flags, _ = _COMPLETE.unpack_from(self._cring, (self._c_head & self._mask) * _COMPLETE_SIZE)
        self._c_head += 1
        return corr, res, flags

    def _submit_cancel(self, corr: int) -> bool:
        spec = SqeSpec(OP_ASYNC_CANCEL, -1, addr=corr)
        if not self._push_sqe(CANCEL_TAG | corr, spec):
            return False
        self._sent(self._enter(self._unsubmitted, 0, ENTER_GETEVENTS, -1))
        return True

    # Slots ------------------------------------------------------------------------------------

    def _slot_take(self) -> int:
        if not self._free:
            return -1
        i = self._free.pop()
        s = self._slots[i]
        s.busy = True
        s.gen = (s.gen + 1) & _U32
        s.reads = s.stream = s.ints = s.call = s.loop = s.stopping = False
        s.cancelled = s.multi = s.quiet = s.accepts = False
        s.group = s.left = s.stat_out = 0
        s.settles = False
        s.answer = None
        if not self._inflight:
            _IN_FLIGHT[self._serial] = self._slots
        self._inflight += 1
        return i

    def _slot_free(self, i: int) -> None:
        s = self._slots[i]
        s.fut = s.obj = s.orphan = s.end = s.results = s.view = None
        s.busy = False
        self._free.append(i)
        self._inflight -= 1
        if not self._inflight:
            del _IN_FLIGHT[self._serial]

    def _token(self, i: int) -> int:
        return (self._slots[i].gen << GEN_SHIFT) | i

    def _read_into(self, s: _Slot, a: list[int], n: int, stream: bool) -> None:
        """Give slot s a buffer of n bytes for the kernel to read into; point the entry at it."""
        s.obj = _scratch("char[]", max(n, 1))
        s.reads = True
        s.len = n
        s.stream = stream
        s.fd = _i32(a[0])
        a[1] = int(ffi.cast("uintptr_t", s.obj))
        a[2] = n

    def _write_entry(self, corr: int, nr: int, a: list[int] | tuple[int, ...], flags: int = 0) -> None:
        _SUBMIT.pack_into(self._sring, (self._s_tail & self._mask) * _SUBMIT_SIZE, corr, nr, flags,
                          *(x & _U64 for x in a))  # fmt: skip
        self._s_tail += 1
        self._entries += 1

    @staticmethod
    def _value_of(s: _Slot, res: int) -> Any:
        """A finished read's bytes (a short read shorter) or a call's count; raises the OSError of -errno."""
        if res < 0:
            raise _oserror(-res)
        if not s.reads:
            return res
        buf, s.obj = s.obj, None
        return ffi.buffer(buf, res)[:]

    # Routing ------------------------------------------------------------------------------------

    def _accepts(self, nr: int, a: list[int]) -> bool:
        """May the lane take syscall nr with these argument words? The rules of ksvc_basic.translation."""
        if nr >= NR_TABLE or not self._kind[nr]:
            return False
        kind = self._kind[nr]
        if kind in STAT_KINDS and self._statx_bufs is None:
            self._statx_bufs = ffi.new("char[]", self._nslots * lx.STATX_SIZE)
        return args_fit(kind, a) and fd_suits(kind, _i32(a[0]))

    def _usable(self) -> bool:
        return not self._dead and not self._refusing and self._ring is not None and thread_serial() == self._owner

    def _mine_and_open(self) -> bool:
        return self._ring is not None and thread_serial() == self._owner

    @staticmethod
    def _words(args: tuple[Any, ...]) -> list[int] | None:
        """Six argument words: ints only (anything else: the generic path, which raises os's error)."""
        out = [0] * 6
        for i, v in enumerate(args[:6]):
            if not isinstance(v, int) or not _I64_MIN <= v <= _U64:
                return None
            out[i] = v & _U64
        return out

    def _buffer_nr(self, obj: Any) -> int | None:
        """obj as a syscall number the lane routes to a read or write into a buffer."""
        v = _as_long(obj)
        if v is None or not 0 <= v < NR_TABLE or self._kind[v] not in (K_STREAM, K_POSITIONED, K_SOCKET):
            return None
        return v

    def _read_words(self, nr: int, fd_obj: Any, n_obj: Any, a3_obj: Any) -> tuple[list[int], int] | None:
        fd, n, a3 = _as_long(fd_obj), _as_long(n_obj), _as_long(a3_obj)
        if fd is None or n is None or a3 is None:
            return None
        if not _I32_MIN <= fd <= _I32_MAX or n < 0 or n > _MAX_RW:
            return None
        a = [fd & _U64, 0, n, a3 & _U64, 0, 0]
        return (a, n) if self._accepts(nr, a) else None

    def _read_args(self, args: tuple[Any, ...]) -> tuple[int, list[int], int] | None:
        if len(args) != 4:
            return None
        nr = self._buffer_nr(args[0])
        if nr is None:
            return None
        got = self._read_words(nr, args[1], args[2], args[3])
        return None if got is None else (nr, got[0], got[1])

    def _write_args(self, args: tuple[Any, ...]) -> tuple[int, list[int], Any] | None:
        """(nr, words, the buffer held) of a write from any object with the buffer protocol."""
        if len(args) != 4:
            return None
        nr = self._buffer_nr(args[0])
        if nr is None:
            return None
        fd, a3 = _as_long(args[1]), _as_long(args[3])
        if fd is None or a3 is None or not _I32_MIN <= fd <= _I32_MAX:
            return None
        view = _buffer_of(args[2])
        if view is None:
            return None
        cdata, length = view
        a = [fd & _U64, int(ffi.cast("uintptr_t", cdata)), length, a3 & _U64, 0, 0]
        return (nr, a, cdata) if self._accepts(nr, a) else None

    # Blocking ------------------------------------------------------------------------------------

    def _find(self, corr: int, s: _Slot) -> bool:
        # A blocking lane has one entry in flight: its completion is the one at the head.
        if s.answer is not None:
            return True
        while self._c_head != self._c_tail:
            got, res, _flags, _ = _COMPLETE.unpack_from(self._cring, (self._c_head & self._mask) * _COMPLETE_SIZE)
            if got == corr:
                s.answer = res  # first: an interrupt between the two lines loses nothing
            self._c_head += 1
            if got == corr:
                return True
        return False

    def _settle(self, corr: int, s: _Slot) -> bool:
        """Cancel in the kernel, then wait (bounded, not ended by signals) for the entry's answer."""
        started = False
        end = time.monotonic_ns() + self._settle_ns
        while True:
            try:
                if not started:
                    started = True
                    self._submit_cancel(corr)
                self._reap()
                if self._find(corr, s):
                    return True
                left = end - time.monotonic_ns()
                if left <= 0:
                    break
                self._sent(self._enter(self._unsubmitted, 1, ENTER_GETEVENTS, min(left, WAIT_SLICE_NS)))
            except BaseException:  # noqa: BLE001 - a second handler's exception: the first one propagates
                continue
        self._dead = True  # still in the kernel: its memory stays with the slot, the lane is never used again
        return False

    def _wait_for(self, corr: int, s: _Slot) -> int:
        """Wait in the kernel for entry corr's completion; its result (raises _LaneFailure when the ring fails)."""
        while True:
            self._reap()
            if self._find(corr, s):
                assert s.answer is not None
                return s.answer
            r = self._enter(self._unsubmitted, 1, ENTER_GETEVENTS, WAIT_SLICE_NS)
            self._sent(r)
            if r < 0 and r not in (-errno.EINTR, -errno.ETIME, -errno.EAGAIN, -errno.EBUSY):
                self._dead = True
                raise _LaneFailure(-r)
            if 0 < self._deadline_ns < time.monotonic_ns():
                # The instance is closing and its drain time is over: cancel, as the dispatcher does.
                if self._settle(corr, s):
                    assert s.answer is not None
                    return s.answer
                raise _StillHeld

    def _in_sq(self, corr: int) -> bool:
        """Is an SQE for corr in the SQ, not yet taken by the kernel?"""
        ring = self._ring
        assert ring is not None
        head, tail = int(ring._sq_head_p[0]), ring._sq_tail
        while head != tail:
            if int(ring._sqes[head & ring._sq_mask].user_data) == corr:
                return True
            head = (head + 1) & _U32
        return False

    def _give_up(self, corr: int, i: int, tail0: int) -> None:
        """An exception (a signal handler's: in Python it may land anywhere) left a blocking call: an entry
        the kernel never saw is dropped; one it has is cancelled and settled, and what it did is kept
        (take_late). One the kernel still holds after settle_s keeps its slot, and the lane dies."""
        s = self._slots[i]
        if not s.busy or self._token(i) != corr:
            return  # already answered and freed
        if self._s_tail == tail0:
            self._slot_free(i)  # never written
            return
        if self._s_head != self._s_tail:
            pushed = self._in_sq(corr)  # an exception between writing the SQE and counting it
            self._s_head = self._s_tail
            if not pushed:
                self._slot_free(i)
                return
        if self._settle(corr, s):
            res = s.answer
            assert res is not None
            data = None
            if res > 0 and s.reads:
                data = self._value_of(s, res)
            self._late = (s.fd, res, data)
            self._slot_free(i)

    def _run_blocking(self, nr: int, a: list[int], read_len: int, stream: bool, raw: bool,
                      prebuilt: tuple[Any, bytes] | None = None) -> Any:  # fmt: skip
        """Run one entry on this thread; its value, or None when the lane does not take it."""
        tail0 = self._s_tail
        i = self._slot_take()
        if i < 0:
            return None
        s = self._slots[i]
        corr = self._token(i)
        try:
            s.fd = -1 if prebuilt is not None else _i32(a[0])
            if read_len >= 0:
                self._read_into(s, a, read_len, stream)
            if prebuilt is not None:
                s.obj = prebuilt  # the SQE and what it points at
            self._write_entry(corr, nr, a, ENTRY_PREBUILT if prebuilt is not None else 0)
            r = self._submit()
            if r < 0 and r not in (-errno.EAGAIN, -errno.EBUSY):
                # Nothing reached the kernel (the ring itself refused): the generic path runs it.
                self._s_head = self._s_tail
                self._dead = True  # a ring that refuses io_uring_enter is not used again
                self._slot_free(i)
                return None
            self._busy_blocking = True  # close() leaves the ring alone while this thread may be in the kernel
            res = self._wait_for(corr, s)
        except _LaneFailure as failure:
            self._busy_blocking = False
            raise _oserror(failure.err) from None
        except _StillHeld:
            # Closing, and the kernel did not answer the cancel: the slot keeps the memory (the lane is dead).
            self._busy_blocking = False
            raise _oserror(errno.ECANCELED) from None
        except BaseException:
            self._busy_blocking = False
            self._give_up(corr, i, tail0)
            raise
        self._busy_blocking = False
        try:
            return res if raw else self._value_of(s, res)
        finally:
            self._slot_free(i)

    def call(self, *args: Any) -> Any:
        """call(nr, *args) -> the syscall's result (-errno on failure), or None when the lane does not take it."""
        if not 1 <= len(args) <= 7:
            raise TypeError("call(nr, *args): 1 to 7 arguments")
        nr = args[0]
        if not self._usable() or not isinstance(nr, int) or not 0 <= nr < NR_TABLE:
            return None
        a = self._words(args[1:])
        if a is None or not self._accepts(nr, a):
            return None
        return self._run_blocking(nr, a, -1, False, True)

    def read(self, *args: Any) -> Any:
        """read(nr, fd, n, offset_or_flags) -> bytes, or None when the lane does not take it; OSError on failure."""
        if not self._usable():
            return None
        got = self._read_args(args)
        if got is None:
            return None
        nr, a, n = got
        return self._run_blocking(nr, a, n, self._kind[nr] != K_POSITIONED, False)

    def write(self, *args: Any) -> Any:
        """write(nr, fd, data, offset_or_flags) -> int, or None when the lane does not take it."""
        if not self._usable():
            return None
        got = self._write_args(args)
        if got is None:
            return None
        nr, a, view = got
        try:
            return self._run_blocking(nr, a, -1, False, False)
        except BaseException:
            if self._dead:
                _STILL_HELD.append(view)  # a lane that died holding it keeps it: the kernel may read it
            else:
                ffi.release(view)  # the kernel is done: an OSError's frames must not hold the caller's buffer
            raise

    def _wait_chunk(self, idx: list[int], res: list[int], done: list[bool],
                    interrupted: BaseException | None) -> BaseException | None:  # fmt: skip
        """Wait for one read_many chunk; the exception that interrupted it (everything settled first)."""
        m = len(idx)
        for j, i in enumerate(idx):
            self._slots[i].pos = j
        left = m
        end = 0
        if interrupted is not None:  # it came while the chunk was being written: cancel it all at once
            end = time.monotonic_ns() + self._settle_ns
            for j in range(m):
                self._submit_cancel(self._token(idx[j]))
        while True:
            try:
                self._reap()
                while self._c_head != self._c_tail:
                    corr, r, _flags, _ = _COMPLETE.unpack_from(
                        self._cring, (self._c_head & self._mask) * _COMPLETE_SIZE)  # fmt: skip
                    i = corr & _SLOT_MASK
                    if i < self._nslots and self._slots[i].busy and self._token(i) == corr:
                        j = self._slots[i].pos
                        if 0 <= j < m and idx[j] == i and not done[j]:
                            res[j] = r
                            done[j] = True
                            left -= 1
                    self._c_head += 1
                if not left:
                    return interrupted
                if interrupted is not None and time.monotonic_ns() > end:
                    self._dead = True  # still in the kernel: kept
                    return interrupted
                self._sent(self._enter(self._unsubmitted, 1, ENTER_GETEVENTS, WAIT_SLICE_NS))
            except BaseException as exc:  # noqa: BLE001 - a signal handler's: cancel what is left, then raise it
                if interrupted is None:
                    interrupted = exc
                    end = time.monotonic_ns() + self._settle_ns
                    for j in range(m):
                        if not done[j]:
                            self._submit_cancel(self._token(idx[j]))

    @staticmethod
    def _offsets(obj: Any) -> list[int] | tuple[int, ...] | None:
        """offsets as a sequence of ints >= 0, or None when it is not one (the generic path gives EINVAL)."""
        try:
            items = obj if isinstance(obj, list | tuple) else list(obj)
        except Exception:
            return None
        for off in items:
            if not isinstance(off, int) or not 0 <= off <= _I64_MAX:
                return None
        return items

    def read_many(self, *args: Any) -> Any:
        """read_many(nr, fd, size, offsets) -> list: for each offset the bytes read (a short read shorter) or
        -errno; None when the lane does not take the reads (nr is pread64)."""
        if len(args) != 4:
            raise TypeError("read_many(nr, fd, size, offsets)")
        if not self._usable():
            return None
        got = self._read_args((args[0], args[1], args[2], 0))
        if got is None or self._kind[got[0]] != K_POSITIONED:
            return None
        nr, a, size = got
        items = self._offsets(args[3])
        if items is None:
            return None
        return self._run_many(nr, a[0], size, items, 0)

    def rw_many(self, *args: Any) -> Any:
        """rw_many(nr, fd, buffer, size, offsets) -> list: entry i reads into (nr pread64) or writes from
        (pwrite64) buffer[i*size:(i+1)*size] at offsets[i]; for each, the byte count or -errno. None when
        the lane does not take them."""
        if len(args) != 5:
            raise TypeError("rw_many(nr, fd, buffer, size, offsets)")
        if not self._usable():
            return None
        nr = self._buffer_nr(args[0])
        if nr is None or self._kind[nr] != K_POSITIONED:
            return None
        fd, size = _as_long(args[1]), _as_long(args[3])
        if fd is None or size is None or not _I32_MIN <= fd <= _I32_MAX or not 0 <= size <= _MAX_RW:
            return None
        items = self._offsets(args[4])
        if items is None:
            return None
        try:
            cdata = ffi.from_buffer(args[2], require_writable=self._opcode[nr] == OP_READ)
        except (TypeError, ValueError, BufferError):
            return None
        base = int(ffi.cast("uintptr_t", cdata))
        a = [fd & _U64, base, size, items[0] if items else 0, 0, 0]
        if len(items) * size > len(cdata) or not base or not self._accepts(nr, a):
            return None
        try:
            return self._run_many(nr, a[0], size, items, base)
        except BaseException:
            if self._dead:
                _STILL_HELD.append(cdata)  # a lane that died holding it keeps it: the kernel may use it
            else:
                ffi.release(cdata)  # the kernel is done: the exception's frames must not hold the caller's buffer
            raise

    def _run_many(self, nr: int, fd: int, size: int, items: list[int] | tuple[int, ...], base: int) -> list[Any]:
        """Run the positioned entries of nr on fd, size bytes each at *items*, in chunks. base 0: each reads
        into new bytes (the result: the bytes or -errno); else entry i uses base + i * size (the result: the
        count or -errno)."""
        n = len(items)
        out: list[Any] = [None] * n
        assert self._ring is not None
        chunk = min(self._ring.sq_entries, MANY_CHUNK, self._nslots)
        self._busy_blocking = True
        try:
            for first in range(0, n, chunk):
                m = min(n - first, chunk)
                idx: list[int] = []
                error: BaseException | None = None
                early: BaseException | None = None
                tail0 = self._s_tail
                try:
                    for j in range(m):
                        i = self._slot_take()
                        if i < 0:
                            break
                        idx.append(i)
                        w = [fd, base + (first + j) * size if base else 0, size, items[first + j], 0, 0]
                        if not base:
                            try:
                                self._read_into(self._slots[i], w, size, False)
                            except MemoryError as exc:
                                error = exc
                                break
                        self._write_entry(self._token(i), nr, w)
                    if len(idx) < m and error is None:
                        error = MemoryError()  # no slot: what was written still runs, then this is raised
                except BaseException as exc:  # noqa: BLE001 - a signal handler's, raised once the chunk settled
                    early = exc
                written = self._s_tail - tail0
                for i in idx[written:]:
                    self._slot_free(i)  # taken, never written
                del idx[written:]
                try:
                    self._submit()
                except BaseException as exc:  # noqa: BLE001
                    early = early or exc
                res = [0] * len(idx)
                done = [False] * len(idx)
                interrupted = self._wait_chunk(idx, res, done, early)
                error = error or interrupted
                for j, i in enumerate(idx):
                    if not done[j]:
                        continue  # the kernel still holds it: the slot keeps its memory
                    s = self._slots[i]
                    if error is None:
                        out[first + j] = res[j] if res[j] < 0 or base else self._value_of(s, res[j])
                    self._slot_free(i)
                if error is not None:
                    raise error
        finally:
            self._busy_blocking = False
        return out

    # Loop lanes -------------------------------------------------------------------------------------

    def _start_entry(self, nr: int, a: list[int], fut: Any, keep: Any, read_len: int, stream: bool, view: Any,
                     ints: bool, eflags: int = 0) -> int | None:  # fmt: skip
        """Queue one entry with its future; the slot holds the read's buffer, the write's view, or keep."""
        i = self._slot_take()
        if i < 0:
            return None
        s = self._slots[i]
        if read_len >= 0:
            try:
                self._read_into(s, a, read_len, stream)
            except BaseException:
                self._slot_free(i)
                raise
        else:
            s.obj = keep
        s.view = view
        s.ints = ints
        s.fut = fut
        t = self._token(i)
        if fut.__class__ is waiter_reference.Waiter:  # it settles its own cancellation through this lane
            fut._bind(self, t)
        self._write_entry(t, nr, a, eflags)
        return t

    def _prebuilt(self, keep: Any, sqe: Any) -> tuple[list[int], tuple[Any, bytes]] | None:
        """A caller-built SQE: 64 bytes with no SQE flags, since a link, a provided buffer or a skipped
        completion would tie it to the lane's other entries. The entry's words (args[0]: the SQE's address)
        and what its slot keeps, or None when refused (or the lane takes nothing now)."""
        if sqe.__class__ is not bytes or len(sqe) != U.SQE_SIZE:
            raise ValueError(f"an SQE is {U.SQE_SIZE} bytes (bytes), not {type(sqe).__name__}")
        if sqe[1] or not self._usable():
            return None
        return [int(ffi.cast("uintptr_t", ffi.from_buffer(sqe))), 0, 0, 0, 0, 0], (keep, sqe)

    def start_sqe(self, *args: Any) -> Any:
        """start_sqe(fut, keep, sqe) -> token, or None: queue an SQE built by the caller (64 bytes, no SQE
        flags; its user_data is the lane's); turn() resolves fut with the CQE's result."""
        if len(args) != 3:
            raise TypeError("start_sqe(fut, keep, sqe)")
        got = self._prebuilt(args[1], args[2])
        if got is None:
            return None
        a, hold = got
        return self._start_entry(0, a, args[0], hold, -1, False, None, True, ENTRY_PREBUILT)

    def call_sqe(self, *args: Any) -> Any:
        """call_sqe(keep, sqe) -> the CQE's result (-errno on failure), or None when the lane does not take
        it: run an SQE built by the caller (64 bytes, no SQE flags) on this thread, blocking."""
        if len(args) != 2:
            raise TypeError("call_sqe(keep, sqe)")
        got = self._prebuilt(args[0], args[1])
        if got is None:
            return None
        a, hold = got
        return self._run_blocking(0, a, -1, False, True, hold)

    def start(self, *args: Any) -> Any:
        """start(fut, keep, nr, *args) -> token, or None: queue an entry; turn() resolves fut with the result."""
        if not 3 <= len(args) <= 9:
            raise TypeError("start(fut, keep, nr, *args)")
        nr = args[2]
        if not self._usable() or not isinstance(nr, int) or not 0 <= nr < NR_TABLE:
            return None
        a = self._words(args[3:])
        if a is None or not self._accepts(nr, a):
            return None
        return self._start_entry(nr, a, args[0], args[1], -1, False, None, True)

    def start_write(self, *args: Any) -> Any:
        """start_write(fut, nr, fd, data, offset_or_flags) -> token, or None: queue a write from data."""
        if len(args) != 5:
            raise TypeError("start_write(fut, nr, fd, data, offset_or_flags)")
        if not self._usable():
            return None
        got = self._write_args(args[1:])
        if got is None:
            return None
        nr, a, view = got
        return self._start_entry(nr, a, args[0], None, -1, False, view, False)

    def start_read(self, *args: Any) -> Any:
        """start_read(fut, nr, fd, n, offset_or_flags) -> token, or None: queue a read into new bytes."""
        if len(args) != 5:
            raise TypeError("start_read(fut, nr, fd, n, offset_or_flags)")
        if not self._usable():
            return None
        got = self._read_args(args[1:])
        if got is None:
            return None
        nr, a, n = got
        return self._start_entry(nr, a, args[0], None, n, self._kind[nr] != K_POSITIONED, None, False)

    def _group_prefix(self, items: list[Any] | tuple[Any, ...]) -> int:
        """How many of items the lane takes as one group: a prefix of offsets >= 0, no more than its free slots."""
        n = min(len(items), len(self._free))
        m = 0
        while m < n and isinstance(items[m], int) and 0 <= items[m] <= _I64_MAX:
            m += 1  # an offset the lane does not take, and those after it: the caller's other path
        return m

    def _start_group(self, fut: Any, nr: int, fd: int, size: int, items: list[Any] | tuple[Any, ...], m: int,
                     base: int) -> tuple[int, int]:  # fmt: skip
        """Queue one group: positioned entries of nr, entry j at items[j], each into new bytes (base 0) or into
        or from base + j*size. The first slot leads: it holds the results and fut until the last answer
        (_deliver_group). (how many started, the leader's slot or -1)."""
        results: list[Any] = [None] * m
        li = -1
        started = 0
        for j in range(m):
            i = self._slot_take()
            if i < 0:
                break
            s = self._slots[i]
            s.fd = _i32(fd)
            w = [fd, base + j * size if base else 0, size, items[j], 0, 0]
            if not base:
                try:
                    self._read_into(s, w, size, False)
                except MemoryError:
                    self._slot_free(i)
                    break
            if li < 0:
                li = i
            s.group = li + 1
            s.pos = j
            self._write_entry(self._token(i), nr, w)
            started += 1
        if li < 0:
            return 0, -1
        del results[started:]
        lead = self._slots[li]
        lead.results = results
        lead.left = started
        lead.fut = fut
        return started, li

    @staticmethod
    def _sequence(offsets: Any) -> list[Any] | tuple[Any, ...]:
        try:
            return offsets if isinstance(offsets, list | tuple) else list(offsets)
        except TypeError:
            raise TypeError("offsets must be a sequence") from None

    def start_read_many(self, *args: Any) -> int:
        """start_read_many(fut, nr, fd, size, offsets) -> how many started (0: none): positioned reads at the
        first offsets (as many as there are slots); fut gets their results in order (bytes or -errno)."""
        if len(args) != 5:
            raise TypeError("start_read_many(fut, nr, fd, size, offsets)")
        fut, nr_obj, fd, size_obj, offsets = args
        items = self._sequence(offsets)
        if not items or not self._usable():
            return 0
        nr = self._buffer_nr(nr_obj)
        if nr is None or self._kind[nr] != K_POSITIONED:
            return 0
        got = self._read_words(nr, fd, size_obj, items[0])  # the descriptor and arguments, checked once
        if got is None:
            return 0
        a, size = got
        m = self._group_prefix(items)
        return self._start_group(fut, nr, a[0], size, items, m, 0)[0] if m else 0

    def start_rw_many(self, *args: Any) -> int:
        """start_rw_many(fut, nr, fd, buffer, size, offsets, first) -> how many started (0: none): pread64 or
        pwrite64 of entry i into or from buffer[i*size:(i+1)*size] at offsets[i], for i from first on (as many
        as there are slots); fut gets their byte counts (or -errno) in order. The lane holds the buffer until
        the last answer, also when fut is cancelled; it must hold every offset's block."""
        if len(args) != 7:
            raise TypeError("start_rw_many(fut, nr, fd, buffer, size, offsets, first)")
        fut, nr_obj, fd_obj, buffer, size_obj, offsets, first_obj = args
        items = self._sequence(offsets)
        first = _as_long(first_obj)
        if first is None or not 0 <= first < len(items) or not self._usable():
            return 0
        nr = self._buffer_nr(nr_obj)
        if nr is None or self._kind[nr] != K_POSITIONED:
            return 0
        fd, size = _as_long(fd_obj), _as_long(size_obj)
        if fd is None or size is None or not _I32_MIN <= fd <= _I32_MAX or not 0 <= size <= _MAX_RW:
            return 0
        try:
            cdata = ffi.from_buffer(buffer, require_writable=self._opcode[nr] == OP_READ)
        except (TypeError, ValueError, BufferError):
            return 0
        base = int(ffi.cast("uintptr_t", cdata))
        started, li = 0, -1
        if len(items) * size <= len(cdata) and base and self._accepts(nr, [fd & _U64, base, size, 0, 0, 0]):
            rest = items[first:]
            m = self._group_prefix(rest)
            if m:
                started, li = self._start_group(fut, nr, fd & _U64, size, rest, m, base + first * size)
        if li >= 0:
            self._slots[li].view = cdata  # the leader holds the buffer until the group's last answer
        else:
            ffi.release(cdata)
        return started

    # Callbacks (transports) ---------------------------------------------------------------------------

    def _slot_of(self, token: Any) -> _Slot | None:
        """The slot of a token still in flight."""
        if not isinstance(token, int) or not 0 <= token <= _U64:
            return None
        i = token & _SLOT_MASK
        if i >= self._nslots:
            return None
        s = self._slots[i]
        return s if s.busy and s.gen == (token >> GEN_SHIFT) & _U32 else None

    def _call_slot(self, i: int, arg: Any) -> tuple[int, BaseException | None]:
        """Call slot i's callable with arg: (1, None) returned, (0, exc) raised, (-1, None) it forked and the
        child dropped the lane, so the slot is no longer this lane's to touch."""
        s = self._slots[i]
        fn, gen = s.fut, s.gen
        err: BaseException | None = None
        try:
            fn(arg)
        except BaseException as exc:  # noqa: BLE001 - the callback's failure is reported, as lane.c does
            err = exc
        if not s.busy or s.gen != gen:
            if err is not None:
                _unraisable(err, fn)
            return -1, None
        return (1, None) if err is None else (0, err)

    def _end_loop(self, i: int, why: Any) -> None:
        """A loop ends: on_end(why) (0 at end of file, -errno, on_data's exception, None when stopped)."""
        s = self._slots[i]
        end, s.end = s.end, None
        self._slot_free(i)  # first: on_end may start the next receive
        if end is not None:
            try:
                end(why)
            except BaseException as exc:  # noqa: BLE001
                _unraisable(exc, end)

    def _start_multishot(self, nr: int, a: list[int], on: Any, end: Any, eflags: int) -> int | None:
        i = self._slot_take()
        if i < 0:
            return None
        s = self._slots[i]
        s.call = True
        s.nr = nr
        s.fd = _i32(a[0])
        s.fut = on
        s.end = end
        self._write_entry(self._token(i), nr, a, eflags)
        return i

    def _pbuf_put(self, bid: int) -> None:
        # struct io_uring_buf: addr u64, len u32, bid u16, resv u16; the ring's tail is the resv of entry 0,
        # so entries are written field by field, never whole.
        e = self._pbuf_entries[self._pbuf_tail & (PBUF_COUNT - 1)]
        e.addr = self._pbuf_base + bid * PBUF_SIZE
        e.len = PBUF_SIZE
        e.bid = bid
        self._pbuf_tail = (self._pbuf_tail + 1) & 0xFFFF
        self._pbuf_entries[0].resv = self._pbuf_tail

    def _pbuf_ready(self) -> bool:
        """Register the lane's provided buffers once (kernels from 6.0, which have multishot receives too)."""
        if self._pbuf_state:
            return self._pbuf_state > 0
        self._pbuf_state = -1
        if not self._poll_first or self._ring is None:
            return False
        try:
            ring = forksafety.SharedMapping(PBUF_COUNT * 16)
        except OSError:
            return False
        try:
            bufs = forksafety.SharedMapping(PBUF_COUNT * PBUF_SIZE)
        except OSError:
            ring.close()
            return False
        reg = ffi.new("struct lane_buf_reg *", {"ring_addr": ring.address, "ring_entries": PBUF_COUNT,
                                                 "bgid": PBUF_GROUP})  # fmt: skip
        r = native.syscall(U.NR_IO_URING_REGISTER, self._ring.fd, REGISTER_PBUF_RING,
                           int(ffi.cast("uintptr_t", reg)), 1)  # fmt: skip
        if r < 0:
            ring.close()
            bufs.close()
            return False
        self._pbuf_ring, self._pbufs = ring, bufs
        self._pbuf_entries = ffi.cast("struct lane_buf *", ring.address)
        self._pbuf_base = bufs.address
        for bid in range(PBUF_COUNT):
            self._pbuf_put(bid)
        self._pbuf_state = 1
        return True

    def receive(self, *args: Any) -> Any:
        """receive(on_data, on_end, fd, size) -> token, or None: a receive loop on a blocking socket:
        on_data(bytes) per arrival until end of file, an error, on_data's exception, or stop()/cancel();
        then on_end(why) once (0, -errno, the exception, or None when stopped)."""
        if len(args) != 4:
            raise TypeError("receive(on_data, on_end, fd, size)")
        nr = self._recv_nr
        if nr >= NR_TABLE or not self._usable():
            return None
        got = self._read_words(nr, args[2], args[3], 0)
        if got is None:
            return None
        a, n = got
        if self._pbuf_ready():
            # One multishot receive: the kernel keeps its poll armed and picks a provided buffer per arrival.
            a[1] = a[2] = 0
            i = self._start_multishot(nr, a, args[0], args[1], ENTRY_MULTISHOT)
            if i is None:
                return None
            s = self._slots[i]
            s.loop = s.multi = True
            return self._token(i)
        t = self._start_entry(nr, a, args[0], None, n, True, None, False)
        s2 = self._slot_of(t) if t is not None else None
        if s2 is not None:
            s2.call = s2.loop = True
            s2.nr = nr
            s2.end = args[1]
        return t

    def accept_loop(self, *args: Any) -> Any:
        """accept_loop(on_conn, on_end, fd, flags) -> token, or None: one multishot accept on a blocking
        listening socket: on_conn(new_fd) per connection until an error or cancel(); then on_end(-errno)."""
        if len(args) != 4:
            raise TypeError("accept_loop(on_conn, on_end, fd, flags)")
        nr = self._accept_nr
        if nr >= NR_TABLE or not self._usable() or not self._poll_first:
            return None
        if not isinstance(args[2], int) or not isinstance(args[3], int):
            return None
        fd, flags = _as_long(args[2]), _as_long(args[3])
        if fd is None or flags is None:
            return None
        a = [fd & _U64, 0, 0, flags & _U32, 0, 0]
        if fd < 0 or fd > _I32_MAX or flags < 0 or not self._accepts(nr, a):
            return None
        i = self._start_multishot(nr, a, args[0], args[1], ENTRY_ACCEPTS)
        if i is None:
            return None
        s = self._slots[i]
        s.accepts = True
        s.len = flags & _U32  # for the re-armed accept
        return self._token(i)

    def send(self, *args: Any) -> Any:
        """send(on_sent, fd, data, flags) -> token, or None: send data on fd (a transport's blocking socket);
        on_sent(count or -errno) only if the send is short or fails, or once watch(token) asked for it."""
        if len(args) != 4:
            raise TypeError("send(on_sent, fd, data, flags)")
        nr = self._send_nr
        if nr >= NR_TABLE or not self._usable() or not isinstance(args[1], int) or not isinstance(args[3], int):
            return None
        fd, fl = _as_long(args[1]), _as_long(args[3])
        if fd is None or fl is None or fd < 0 or fd > _I32_MAX or fl < 0 or fl > _U32:
            return None
        view = _buffer_of(args[2])
        if view is None or view[1] > _U32:
            return None
        cdata, length = view
        a = [fd, int(ffi.cast("uintptr_t", cdata)), length, fl, 0, 0]
        t = self._start_entry(nr, a, args[0], None, -1, False, cdata, True)
        if t is None:
            return None
        s = self._slots[t & _SLOT_MASK]
        s.call = s.quiet = True
        s.len = length
        return t

    def watch(self, token: Any) -> bool:
        """watch(token) -> bool: have a send's on_sent called when it ends; False: it already ended whole."""
        s = self._slot_of(token)
        if s is None or not s.call:
            return False
        s.quiet = False
        return True

    def stop(self, token: Any) -> bool:
        """stop(token) -> bool: a receive loop queues no next receive (the one in flight still delivers)."""
        s = self._slot_of(token)
        if s is None or not s.loop:
            return False
        if not s.stopping and s.multi and self._mine_and_open():
            self._submit()  # a multishot receive goes on until cancelled: what already arrived still delivers
            self._submit_cancel(token)
        s.stopping = True
        return True

    def retarget(self, *args: Any) -> bool:
        """retarget(token, on_data) -> bool: a receive loop delivers to on_data from now on."""
        if len(args) != 2:
            raise TypeError("retarget(token, on_data)")
        s = self._slot_of(args[0])
        if s is None or not s.loop:
            return False
        s.fut = args[1]
        return True

    def cancel(self, token: Any) -> bool:
        """cancel(token) -> bool: ask the kernel to cancel a callback entry (its callback still runs once;
        a receive loop ends)."""
        s = self._slot_of(token)
        if s is None or not s.call:
            return False
        s.stopping = s.cancelled = True
        if self._mine_and_open():
            self._submit()  # a queued entry reaches the kernel first, so the cancel finds it
            self._submit_cancel(token)
        return True

    def _deliver_call(self, i: int, res: int) -> None:
        """A completion to a callable: the bytes a read got (or -errno), or the result; a receive loop then
        queues its next receive under the same token."""
        s = self._slots[i]
        if s.quiet and res == s.len:
            self._slot_free(i)  # sent whole, nobody waits
            return
        if s.loop and (res <= 0 or s.cancelled):
            self._end_loop(i, res if res <= 0 else -errno.ECANCELED)
            return
        called, err = self._call_slot(i, self._value_of(s, res) if s.reads and res > 0 else res)
        if called < 0:
            return
        if err is not None:
            if s.loop:
                self._end_loop(i, err)
                return
            _unraisable(err, s.fut)
        if not s.loop:
            self._slot_free(i)
            return
        if s.stopping or not self._usable():
            self._end_loop(i, None)
            return
        a = [s.fd & _U64, 0, s.len, 0, 0, 0]
        try:
            self._read_into(s, a, s.len, True)
        except MemoryError as exc:
            self._end_loop(i, exc)
            return
        # Data was just taken: the next is likely not there yet, so the kernel arms its poll at once.
        self._write_entry(self._token(i), s.nr, a, ENTRY_POLL_FIRST if self._poll_first else 0)

    def _deliver_accepts(self, i: int, res: int, flags: int) -> None:
        """A completion of an accept loop: a connection for on_conn, or the series' end (re-arm or on_end)."""
        s = self._slots[i]
        if res >= 0:
            if s.cancelled:
                os.close(res)  # accepted as the loop was being stopped: nobody takes it
            else:
                called, err = self._call_slot(i, res)
                if called < 0:
                    return
                if err is not None:
                    _unraisable(err, s.fut)  # the server's own handler reports its failures
        if flags & CQE_F_MORE:
            return
        if s.cancelled or (res == -errno.ECANCELED and s.stopping):
            self._end_loop(i, -errno.ECANCELED)
        elif res < 0:
            self._end_loop(i, res)
        elif s.stopping or not self._usable():
            self._end_loop(i, None)
        else:
            self._write_entry(self._token(i), s.nr, (s.fd & _U64, 0, 0, s.len, 0, 0), ENTRY_ACCEPTS)

    def _deliver_multishot(self, i: int, res: int, flags: int) -> None:
        """A completion of a multishot receive: data in a provided buffer (copied into new bytes, the buffer
        handed straight back), or the end of the series (re-arm or on_end)."""
        s = self._slots[i]
        if flags & CQE_F_BUFFER:
            bid = flags >> CQE_BUFFER_SHIFT
            v = None
            if res > 0 and not s.cancelled and bid < PBUF_COUNT:
                v = ffi.buffer(ffi.cast("char *", self._pbuf_base + bid * PBUF_SIZE), res)[:]
            if bid < PBUF_COUNT:
                self._pbuf_put(bid)
            if res > 0 and not s.cancelled:
                called, err = self._call_slot(i, v)
                if called < 0:
                    return
                if err is not None:
                    # on_data failed: deliver nothing more; end with its exception once the series ends.
                    s.orphan = err
                    s.cancelled = s.stopping = True
                    if flags & CQE_F_MORE:
                        self._submit_cancel(self._token(i))
        if flags & CQE_F_MORE:
            return  # the series goes on
        if s.orphan is not None:
            exc, s.orphan = s.orphan, None
            self._end_loop(i, exc)
        elif s.cancelled:
            self._end_loop(i, -errno.ECANCELED)
        elif res == 0 and not flags & CQE_F_BUFFER:
            self._end_loop(i, 0)  # end of file
        elif res < 0 and res != -errno.ENOBUFS and not (res == -errno.ECANCELED and s.stopping):
            self._end_loop(i, res)
        elif s.stopping or not self._usable():
            self._end_loop(i, None)
        else:
            # Out of buffers, or the kernel ended it after data: the buffers handed back serve the next.
            self._write_entry(self._token(i), s.nr, (s.fd & _U64, 0, 0, 0, 0, 0), ENTRY_MULTISHOT)

    def _deliver_group(self, i: int, res: int) -> None:
        """One read of a group into the leader's list; the last resolves the leader's future with it."""
        s = self._slots[i]
        li = s.group - 1
        lead = self._slots[li]
        try:
            v = self._value_of(s, res) if res >= 0 else res
        except MemoryError:
            v = -errno.ENOMEM
        if lead.results is not None:
            lead.results[s.pos] = v
        s.group = 0  # answered (a leader's slot stays taken until the last)
        if i != li:
            self._slot_free(i)
        lead.left -= 1
        if lead.left:
            return
        if lead.fut is not None and lead.results is not None:
            try:
                lead.fut.set_result(lead.results)
            except Exception:  # noqa: BLE001 - a cancelled future just lets the list go
                pass
        self._slot_free(li)

    def _deliver_settled(self, i: int, res: int) -> None:
        """The answer to an entry whose waiter asked for its cancellation: a failure (the cancellation among
        them) ends the waiter cancelled, anything else with its value; one that gave up waiting (the settle
        time) has it dropped."""
        s = self._slots[i]
        w = s.fut
        if not w.done():
            if res < 0:
                w._cancel_now()
            else:
                try:
                    v = res if s.ints else self._value_of(s, res)
                except Exception:  # noqa: BLE001 - no memory for the bytes: as cancelled
                    w._cancel_now()
                else:
                    w.set_result(v)
        self._slot_free(i)

    def _settle_entry(self, token: int, w: Any) -> float | None:
        """Ask the kernel to cancel *w*'s entry: the settle time, or None (no such entry)."""
        i = token & _SLOT_MASK
        if i >= self._nslots:
            return None
        s = self._slots[i]
        if not s.busy or s.gen != (token >> GEN_SHIFT) & _U32 or s.fut is not w or s.group or s.call:
            return None
        s.settles = True
        if self._mine_and_open():
            self._submit()  # an entry still queued reaches the kernel first, so the cancel finds it
            self._submit_cancel(token)
        return self._settle_ns / 1e9

    def _resolve(self, token: int, res: int, flags: int) -> None:
        """A completion to its future: the value or the OSError (a settling waiter's: _deliver_settled)."""
        i = token & _SLOT_MASK
        if i >= self._nslots:
            return
        s = self._slots[i]
        if not s.busy or s.gen != (token >> GEN_SHIFT) & _U32 or (s.fut is None and not s.group):
            return
        if s.multi:
            self._deliver_multishot(i, res, flags)
            return
        if s.accepts:
            self._deliver_accepts(i, res, flags)
            return
        if s.group:
            self._deliver_group(i, res)
            return
        if s.call:
            self._deliver_call(i, res)
            return
        if s.settles:
            self._deliver_settled(i, res)
            return
        failed = False
        v: Any
        if s.ints:
            v = res
        else:
            try:
                v = self._value_of(s, res)
            except Exception as exc:  # noqa: BLE001 - the OSError the future gets
                v, failed = exc, True
        try:
            if failed:
                s.fut.set_exception(v)
            else:
                s.fut.set_result(v)
        except Exception:  # noqa: BLE001 - a future cancelled on its own (not a settling waiter) lets it go
            pass
        self._slot_free(i)

    def turn(self, *args: Any) -> int:
        """turn(run_work=True) -> completions delivered: submit queued entries, reap, deliver. run_work: with
        nothing to submit, enter the kernel anyway to run deferred work (the lane's eventfd said so).
        A turn ends after about TURN_BUDGET completions even if more are ready; unfinished then says so."""
        if len(args) > 1:
            raise TypeError("turn(run_work=True)")
        run_work = bool(args[0]) if args else True
        ring = self._ring
        if ring is None or thread_serial() != self._owner or self._in_turn:
            return 0
        r = self._submit()
        if r < 0 and r not in (-errno.EAGAIN, -errno.EBUSY, -errno.EINTR):
            raise _oserror(-r)
        if run_work and not self._unsubmitted and self._inflight and ring.cq_ready() == 0:
            self._enter(0, 0, ENTER_GETEVENTS, -1)  # deferred task work: run it here, now
        done = 0
        outer = waiter_reference.batch_open()
        self._in_turn = True
        self._unfinished = False
        try:
            while True:
                n = self._reap()
                while self._c_head != self._c_tail:
                    corr, res, flags = self._take_completion()
                    self._resolve(corr, res, flags)
                    done += 1
                    # What the callbacks started (a protocol's replies) goes out while the rest are delivered.
                    if self._s_tail - self._s_head >= TURN_FLUSH:
                        self._submit()
                if not n:
                    break
                # Peers that answer at once (a busy server's connections) would keep one turn going for ever:
                # stop, and let the caller run another after the loop's other callbacks.
                if done >= TURN_BUDGET:
                    self._unfinished = True
                    break
        except BaseException:
            self._in_turn = False
            waiter_reference.batch_close(outer, wake=False)
            raise
        self._in_turn = False
        waiter_reference.batch_close(outer)  # wake the tasks of this reap, in order
        return done

    def cancel_all(self) -> int:
        """cancel_all() -> how many: ask the kernel to cancel every entry in flight (loop lanes)."""
        if not self._mine_and_open():
            return 0
        self._submit()
        n = 0
        for i, s in enumerate(self._slots):
            if s.busy and (s.fut is not None or s.group) and self._submit_cancel(self._token(i)):
                n += 1
        return n

    def register_eventfd(self, fd: Any) -> None:
        """register_eventfd(fd): the kernel signals fd when a completion is posted."""
        efd = _as_long(fd) if isinstance(fd, int) else None
        if efd is None:
            if isinstance(fd, int):
                raise OverflowError("Python int too large to convert to C long")
            raise TypeError(f"an integer is required, not {type(fd).__name__}")
        if self._ring is None:
            raise ValueError("the lane is closed")
        val = ffi.new("int *", _i32(efd))
        r = native.syscall(U.NR_IO_URING_REGISTER, self._ring.fd, REGISTER_EVENTFD, int(ffi.cast("uintptr_t", val)), 1)
        if r < 0:
            raise _oserror(-r)

    def take_late(self) -> tuple[int, int, bytes | None] | None:
        """take_late() -> (fd, result, bytes or None) of the call an exception interrupted, once answered."""
        late, self._late = self._late, None
        return late

    def closing(self, deadline_s: Any) -> None:
        """closing(deadline_s): take no new calls; one still waiting after monotonic deadline_s is cancelled."""
        if not isinstance(deadline_s, int | float):
            raise TypeError(f"must be real number, not {type(deadline_s).__name__}")  # as PyFloat_AsDouble
        ns = int(float(deadline_s) * 1e9)
        self._deadline_ns = ns if ns > 0 else 1
        self._refusing = True

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()  # unregisters the provided buffers with the ring
            self._ring = None
            for m in (self._pbuf_ring, self._pbufs):
                if m is not None:
                    m.close()
            self._pbuf_ring = self._pbufs = None
            self._pbuf_entries = None
            self._pbuf_base = 0

    def close(self) -> bool:
        """close() -> bool: release the ring; False (nothing done) while entries are in flight or a call waits."""
        if self._inflight or self._busy_blocking:
            return False
        self._close_ring()
        self._dead = True
        return True

    def forget(self) -> None:
        """forget(): in a forked child, drop the parent's ring without touching it."""
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.drop_after_fork()  # its mappings were not inherited; the descriptor is closed by the host
        for m in (self._pbuf_ring, self._pbufs):
            if m is not None:
                m.drop_after_fork()
        self._pbuf_ring = self._pbufs = self._pbuf_entries = None
        self._pbuf_base = 0
        self._dead = True
        for s in self._slots:
            s.busy = False

    def route(self, *args: Any) -> None:
        """route(nr, opcode, kind): the lane takes syscall nr as io_uring opcode (kind: one of KINDS)."""
        if len(args) != 3:
            raise TypeError(f"route expected 3 arguments, got {len(args)}")
        for v in args:
            if not isinstance(v, int):
                raise TypeError(f"an integer is required, not {type(v).__name__}")
        nr, op, kind = (v & _U32 for v in args)
        if nr >= NR_TABLE or op > 255 or kind >= K_LIMIT:
            raise ValueError("route out of range")
        self._opcode[nr] = op
        self._kind[nr] = kind
        if kind == K_SOCKET and op == OP_RECV:
            self._recv_nr = nr
        if kind == K_SOCKET and op == OP_SEND:
            self._send_nr = nr
        if kind == K_ACCEPT and op == OP_ACCEPT:
            self._accept_nr = nr

    def __del__(self) -> None:
        # lane.c's dealloc: the ring goes with the lane (the host keeps for good a lane the kernel holds).
        try:
            self._close_ring()
        except Exception:  # noqa: BLE001 - at interpreter exit modules may be gone
            pass

    @property
    def fileno(self) -> int:
        """The io_uring descriptor (-1 once closed)."""
        return self._ring.fd if self._ring is not None else -1

    @property
    def dead(self) -> bool:
        """True once the lane takes nothing more."""
        return self._dead

    @property
    def inflight(self) -> int:
        """Entries not yet answered."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Entries written, not yet submitted."""
        return self._s_tail - self._s_head

    @property
    def unfinished(self) -> bool:
        """The last turn stopped at its budget: run another."""
        return self._unfinished

    @property
    def setup_flags(self) -> int:
        """The io_uring setup flags the kernel accepted."""
        return self._setup_flags

    @property
    def entries(self) -> int:
        """Entries the lane ran."""
        return self._entries

    @property
    def enters(self) -> int:
        """io_uring_enter calls made."""
        return self._enters

    @property
    def owner(self) -> int:
        """Serial number of the thread that owns the lane."""
        return self._owner

    @property
    def mine(self) -> bool:
        """True on the thread that owns the lane."""
        return thread_serial() == self._owner


class _LaneFailure(Exception):
    """io_uring_enter itself failed while a blocking call waited (the lane is dead)."""

    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.err = err


class _StillHeld(Exception):
    """The closing deadline passed and the kernel still holds the entry after settle_s."""


_STILL_HELD: list[Any] = []
"""Buffers of writes a dead lane's kernel may still read: kept for good (lane.c never releases their views)."""


def _buffer_of(data: Any) -> tuple[Any, int] | None:
    """(cdata holding data's buffer, its length in bytes), or None without a simple contiguous buffer."""
    try:
        mv = memoryview(data)
    except TypeError:
        return None
    if not mv.c_contiguous:
        return None
    length = mv.nbytes
    mv.release()
    try:
        return ffi.from_buffer(data), length
    except (TypeError, ValueError, BufferError):
        return None
