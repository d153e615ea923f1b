"""Typed operations: Python arguments to a raw syscall entry, and the result back.

Each helper is written once here, in :class:`Operations`, and used by both
the blocking and the asyncio front end: it builds an :class:`Op` (syscall
number, raw arguments, the memory to keep alive, how to turn the result
into a Python value) and hands it to ``self._run``, which the front end
implements (blocking: wait and return; asyncio: return a future).

Errors follow ``os.*``: a negative result raises ``OSError`` with that
errno (and the file name, for path operations).
"""

from __future__ import annotations

import errno
import itertools
import operator
import os
import socket as _socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ksvc_host import fastpath, native
from ksvc_host.abi import layout as L
from ksvc_host.abi import linux as lx
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend import sockaddr
from ksvc_host.traits import BufferProvider

ffi = native.ffi
NR = SYSCALLS
_NR_READ = SYSCALLS["read"]
_NR_RECVFROM = SYSCALLS["recvfrom"]
AT_FDCWD = lx.AT_FDCWD
_IOVEC = struct.Struct("<QQ")

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def pin(obj: Any, *, writable: bool = False) -> Any:
    """A cffi view of a caller's buffer, for the kernel to read or fill: the operation lists it in its
    ``pins``, released as soon as the kernel is done with it, before the result or its ``OSError`` reaches
    the caller. (A view still holding a memoryview when both end up in a reference cycle, as an exception
    kept by its own frame does, makes CPython's cycle collector crash: the memoryview cannot be cleared
    while exported.) Take it after every other argument is checked, so that no error leaves it held."""
    return ffi.from_buffer(obj, require_writable=writable)


def unpin(views: tuple[Any, ...]) -> None:
    """Release *views* made by :func:`pin` (again: nothing)."""
    for v in views:
        ffi.release(v)


class Op:
    """One syscall ready to submit."""

    __slots__ = ("nr", "args", "keep", "finish", "filename", "cleanup", "on_error", "capture", "pins")

    def __init__(
        self,
        nr: int,
        args: Sequence[int],
        *,
        keep: Any = None,
        finish: Callable[[int], Any] | None = None,
        filename: Any = None,
        cleanup: Callable[[], None] | None = None,
        on_error: Callable[[int], Any] | None = None,
        pins: tuple[Any, ...] = (),
    ) -> None:
        self.nr = nr
        self.args = tuple(args) + (0,) * (6 - len(args))
        self.keep = keep
        self.finish = finish
        self.filename = filename
        self.cleanup = cleanup
        self.on_error = on_error
        """Maps an errno to a value instead of raising (``access`` returns False)."""
        self.capture: tuple[int, Callable[[int], bytes]] | None = None
        """``(fd, bytes of a result)`` for reads that consume a stream (read, recv): see ``Operations._keep_late``."""
        self.pins = pins
        """Views of the caller's buffers (:func:`pin`), released once the kernel is done with them."""

    def abandon(self, *, kernel_done: bool = True) -> None:
        """The caller gave up on the result (cancelled, interrupted, or it was never submitted): release what
        only the result needed, and the caller's buffers when the kernel is done with them."""
        if self.cleanup is not None:
            self.cleanup()
        if kernel_done:
            unpin(self.pins)

    def outcome(self, result: int) -> Any:
        """The Python value for *result*, or raise ``OSError`` like ``os.*``."""
        try:
            if result < 0:
                if self.on_error is not None:
                    return self.on_error(-result)
                raise oserror(-result, self.filename)
            return result if self.finish is None else self.finish(result)
        finally:
            if self.cleanup is not None:
                self.cleanup()
            unpin(self.pins)


def oserror(err: int, filename: Any = None) -> OSError:
    """An ``OSError`` subclass for *err*, as ``os`` functions raise it."""
    if filename is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), filename)


def _path(p: PathLike) -> Any:
    raw = os.fsencode(p)
    if b"\0" in raw:
        raise ValueError("embedded null byte in path")
    return ffi.new("char[]", raw)


def _addr(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def _u(v: int) -> int:
    return v & lx.U64_MASK


def syscall_number(nr: Any) -> int:
    """A syscall number as an entry carries it (u32): anything else is refused, never truncated."""
    v = operator.index(nr)
    if not 0 <= v <= lx.U32_MASK:
        raise ValueError(f"syscall number {v} is out of range (0 to {lx.U32_MASK})")
    return v


def word(value: Any) -> int:
    """A raw argument word: an int from -2**63 to 2**64-1 (signed or unsigned), as the u64 an entry carries."""
    v = operator.index(value)
    if not -(1 << 63) <= v <= lx.U64_MASK:
        raise OverflowError(f"syscall argument {v} does not fit in 64 bits")
    return v & lx.U64_MASK


_C_INT_MIN, _C_INT_MAX = -(1 << 31), (1 << 31) - 1
_C_LONG_MIN, _C_LONG_MAX = -(1 << 63), (1 << 63) - 1


def _fd(fd: Any) -> int:
    """A descriptor as ``os.*`` takes it (an int that fits a C int), as a raw word."""
    v = operator.index(fd)
    if not _C_INT_MIN <= v <= _C_INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return v & lx.U64_MASK


def _off(offset: Any) -> int:
    """An offset or length as ``os.*`` takes it (an int that fits a C long), as a raw word."""
    v = operator.index(offset)
    if not _C_LONG_MIN <= v <= _C_LONG_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return v & lx.U64_MASK


def _int(value: Any) -> int:
    """A flag, mode or count argument (an int that fits a C int), as a raw word."""
    v = operator.index(value)
    if not _C_INT_MIN <= v <= lx.U32_MASK:
        raise OverflowError("Python int too large to convert to C int")
    return v & lx.U64_MASK


def _stat_result(raw: bytes) -> os.stat_result:
    (dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks,
     a_s, a_ns, m_s, m_ns, c_s, c_ns) = lx.STAT.unpack(raw)  # fmt: skip
    return os.stat_result(
        (mode, ino, dev, nlink, uid, gid, size, a_s, m_s, c_s,
         a_s + a_ns * 1e-9, m_s + m_ns * 1e-9, c_s + c_ns * 1e-9,
         a_s * 10**9 + a_ns, m_s * 10**9 + m_ns, c_s * 10**9 + c_ns, blksize, blocks, rdev)
    )  # fmt: skip


_SCRATCH_KEEP = 4
_SCRATCH_MAX = 16 << 20


_NR_PREAD = NR["pread64"]


class BulkOp:
    """Many entries of one syscall: entry *i* is ``nr(fd, addr0 + i*stride, length, offsets[i])``.

    With *addrs* (a ``uint64_t`` array), entry *i*'s buffer is ``addrs[i]`` instead.
    """

    __slots__ = ("nr", "fd", "addr0", "stride", "length", "offsets", "n", "keep", "finish", "addrs", "tables",
                 "pins")  # fmt: skip

    def __init__(
        self, nr: int, fd: int, addr0: int, stride: int, length: int, offsets: Sequence[int] | None, n: int,
        keep: Any, finish: Callable[[list[int]], Any], addrs: Any = None, tables: tuple[Any, Any] | None = None,
        pins: tuple[Any, ...] = (),
    ) -> None:
        self.nr, self.fd, self.addr0, self.stride, self.length = nr, fd, addr0, stride, length
        self.offsets = offsets
        self.n = n
        self.keep = keep
        self.finish = finish
        """Maps the list of results to the caller's value (raises ``OSError`` on failure)."""
        self.addrs = addrs
        self.tables = tables
        """Reused ``(uint64_t offsets[n], int64_t results[n])`` arrays (streams), or ``None``."""
        self.pins = pins
        """Views of the caller's buffers (:func:`pin`), released once every entry is answered."""

    def done(self, results: list[int]) -> Any:
        """Every entry answered: release the caller's buffers, then the caller's value (or raise)."""
        unpin(self.pins)
        return self.finish(results)


class ReadStream:
    """The plan of a streaming read (``pread_iter``): offsets in parts, each part one bulk.

    At most *depth* reads are in flight, as ``parts_in_flight`` parts of
    ``step`` reads. With the compiled fast path each read fills a new bytes
    object in place (``fastpath.lib.new_bytes``); on the pure path each part
    reads into a staging buffer of its own, copied out and reused. The front
    end submits :meth:`next_op` while fewer than ``parts_in_flight`` are out
    and hands each finished part's results to its ``finish``, in order: the
    bytes read up to the first failure, and that failure's errno (0: none).

    *parts*: how many pieces the window is cut into. One when the caller's
    own thread does the reads (they complete inside the submission); with a
    kernel SQ thread, :data:`PIPELINED_PARTS`, so that the SQ thread always
    has a part queued while the caller converts another (profiled: with two
    parts it idled between them, with four the per-part cost grew).
    """

    PIPELINED_PARTS = 3
    """Parts of the window when the kernel reads on a thread of its own (SQPOLL)."""

    def __init__(self, fd: int, size: int, offsets: Iterable[int], depth: int, parts: int = 1) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int (reads in flight at once), got {depth!r}")
        self.fd = _fd(fd)
        self.size = _length(size)
        self.step = max(1, depth // max(1, parts))
        self.parts_in_flight = depth // self.step  # parts of step reads: never more than depth in flight
        self._offsets = iter(offsets)
        self._free: list[bytearray] = []
        self._tables: list[Any] = []

    def take(self, n: int) -> list[int]:
        """The next *n* offsets (fewer at the end)."""
        return list(itertools.islice(self._offsets, n))

    def rest(self, first: list[int]) -> ReadStream:
        """A stream of the same reads at offsets *first* (taken, not read), then at those not taken yet."""
        depth = self.step * self.parts_in_flight
        return ReadStream(self.fd, self.size, itertools.chain(first, self._offsets), depth)

    def next_op(self) -> BulkOp | None:
        """The next part's bulk operation, or ``None`` when every offset has been submitted."""
        chunk = self.take(self.step)
        if not chunk:
            return None
        size, n = self.size, len(chunk)
        new_bytes = fastpath.lib.new_bytes
        if new_bytes is not None:
            return self._in_place(chunk, new_bytes)
        buf = self._free.pop() if self._free else bytearray(max(1, self.step * size))
        view = ffi.from_buffer(buf)
        free = self._free

        def finish(results: list[int]) -> tuple[list[bytes], int]:
            # Runs once every read of the part completed: the kernel is done with *buf*.
            try:
                with memoryview(buf) as mv:
                    if min(results) == size:
                        return [mv[i : i + size].tobytes() for i in range(0, n * size, size)], 0
                    bad = _first_failure(results)
                    good = [mv[i * size : i * size + r].tobytes() for i, r in enumerate(results[:bad])]
                    return good, (-results[bad] if bad < n else 0)
            finally:
                free.append(buf)

        return BulkOp(_NR_PREAD, self.fd, _addr(view), size, size, chunk, n, (view, buf), finish)

    def _in_place(self, chunk: list[int], new_bytes: Callable[[int, int, int], list[bytes]]) -> BulkOp:
        # Each read fills a new bytes object in place, as os.pread does (no copy out of a staging buffer).
        # The objects stay in this part until their reads complete; short reads are sliced, failed ones dropped.
        # The part's arrays (addresses, offsets, results) are reused once it is finished.
        size, n = self.size, len(chunk)
        if self._tables:
            arrays = self._tables.pop()
        else:
            new = fastpath.ffi.new
            table = new("uint64_t[]", self.step)
            arrays = (table, new("uint64_t[]", self.step), new("int64_t[]", self.step), _addr(table))
        table, offs, res, table_addr = arrays
        try:
            offs[0:n] = chunk
        except OverflowError:  # negative offsets travel as the kernel sees them (it answers EINVAL)
            offs[0:n] = [o & 0xFFFF_FFFF_FFFF_FFFF for o in chunk]
        objs = new_bytes(n, size, table_addr)
        tables = self._tables

        def finish(results: list[int]) -> tuple[list[bytes], int]:
            tables.append(arrays)
            if min(results) == size:
                return objs, 0  # every read full: the objects as they are
            bad = _first_failure(results)
            if bad == n:
                return _as_read(objs, results, size), 0
            return _as_read(objs[:bad], results[:bad], size), -results[bad]

        return BulkOp(_NR_PREAD, self.fd, 0, 0, size, chunk, n, (objs, table), finish, table, (offs, res))


def _first_failure(results: list[int]) -> int:
    """The index of the first failed (negative) result, or ``len(results)``."""
    if not results or min(results) >= 0:
        return len(results)
    return next(i for i, r in enumerate(results) if r < 0)


def _raise_first(results: list[int]) -> None:
    bad = _first_failure(results)
    if bad < len(results):
        raise oserror(-results[bad])


def _as_read(objs: list[bytes], results: list[int], size: int) -> list[bytes]:
    """Bytes objects that reads filled in place, as ``os.pread`` gives them: short reads sliced."""
    if not results or min(results) == size:
        return objs
    return [b if r == size else b[:r] for b, r in zip(objs, results, strict=True)]


def _checked_counts(results: list[int]) -> list[int]:
    _raise_first(results)
    return results


SETTLE_S = 1.0
"""How long an interrupted or cancelled call waits for the kernel to confirm its cancellation."""


class LateResult:
    """A waiter's callback after its caller gave up: keep what a stream read received, release its memory."""

    __slots__ = ("front", "op")

    def __init__(self, front: Operations, op: Op) -> None:
        self.front = front
        self.op = op

    def __call__(self, corr_id: int, result: int, flags: int) -> None:
        if flags > 0 and flags & L.COMPLETION_FLAG_MORE:
            return
        self.front._keep_late(self.op, result)
        self.op.abandon()


class Operations:
    """The typed helpers, shared by the blocking and asyncio front ends.

    Subclasses provide ``_run(op)`` and ``_buffers`` (a BufferProvider).
    Return values are those of the front end: the value itself (blocking)
    or an awaitable (asyncio).
    """

    _buffers: BufferProvider
    _completer: Any

    def _run(self, op: Op) -> Any:  # pragma: no cover - provided by the front end
        raise NotImplementedError

    def _run_bulk(self, bulk: BulkOp) -> Any:  # pragma: no cover - provided by the front end
        raise NotImplementedError

    def _next_part(self, stream: ReadStream) -> tuple[Any, BulkOp] | None:
        """A stream's next part as a bulk of this front end's completer (not yet submitted), or ``None``."""
        op = stream.next_op()
        if op is None:
            return None
        b = self._completer.new_bulk(op.nr, op.fd, op.addr0, op.stride, op.length, op.offsets, op.n, op.keep,
                                     addrs=op.addrs, tables=op.tables)  # fmt: skip
        return b, op

    # -- memory -------------------------------------------------------------------

    def _out(self, n: int) -> tuple[int, Any, Callable[[], None]]:
        """Memory for *n* bytes of output: address, owner, release."""
        handle = self._buffers.acquire(n) if n > 0 else None
        if handle is None:
            mem = native.alloc(n)
            return _addr(mem), mem, _noop
        provider = self._buffers
        return handle.address, handle, lambda: provider.release(handle)

    def _bytes_result(self, n: int, nr: int, args: Callable[[int, int], Sequence[int]], stream_fd: int = -1) -> Any:
        n = _length(n)
        address, owner, release = self._out(n)
        try:
            raw = args(address, n)
        except BaseException:  # a bad argument: nothing was submitted, give the buffer back
            release()
            raise
        op = Op(nr, raw, keep=owner, cleanup=release,
                finish=lambda r: bytes(ffi.buffer(ffi.cast("char *", address), r)))  # fmt: skip
        if stream_fd >= 0:
            op.capture = (stream_fd, op.finish)  # type: ignore[assignment]
        return self._run(op)

    # -- reads that consume a stream: what a cancelled one received is not lost --------------

    _late: dict[int, bytearray]
    """Bytes that reads received after their caller had given up (cancelled, interrupted), per descriptor."""

    def _keep_late(self, op: Op, result: int) -> None:
        """A read whose caller gave up completed after all: keep its bytes for the next read of that descriptor.

        A read without an offset (``read``, ``recv``) consumes what it gets
        from a pipe or socket; when it wins the race with its cancellation
        the bytes are not dropped but handed to the next ``read``/``recv``
        (or ``readinto``/``recv_into``) of the same descriptor through this
        front end (docs/design.md §6).
        """
        if op.capture is None or result <= 0:
            return
        fd, data_of = op.capture
        self._late.setdefault(fd, bytearray()).extend(data_of(result))

    def _take_late(self, key: int, n: int) -> bytes | None:
        """Up to *n* kept bytes of descriptor *key* (its 32-bit number), or None when there are none."""
        buf = self._late.get(key)
        if buf is None:
            return None
        out = bytes(buf[:n])
        del buf[:n]
        if not buf:
            del self._late[key]
        return out

    def _ready(self, value: Any) -> Any:
        """A result known without a syscall, in this front end's form (blocking: itself)."""
        return value

    def _stream_read(self, fd: int, n: int, nr: int, flags: int = 0) -> Any:
        raw_fd = _fd(fd)
        key = raw_fd & lx.U32_MASK
        kept = self._take_late(key, _length(n)) if self._late else None
        if kept is not None:
            return self._ready(kept)
        args = (lambda a, n: (raw_fd, a, n)) if nr == _NR_READ else (lambda a, n: (raw_fd, a, n, _int(flags)))
        return self._bytes_result(n, nr, args, key)

    def _stream_readinto(self, fd: int, buffer: Any, nr: int, flags: int = 0) -> Any:
        raw_fd = _fd(fd)
        key = raw_fd & lx.U32_MASK
        raw_flags = _int(flags)
        view = pin(buffer, writable=True)
        if self._late:
            kept = self._take_late(key, len(view))
            if kept is not None:
                ffi.memmove(view, kept, len(kept))
                unpin((view,))
                return self._ready(len(kept))
        args = (raw_fd, _addr(view), len(view)) if nr == _NR_READ else (raw_fd, _addr(view), len(view), raw_flags)
        op = Op(nr, args, keep=(view, buffer), pins=(view,))
        op.capture = (key, lambda r: ffi.buffer(view, r)[:])
        return self._run(op)

    # -- raw -----------------------------------------------------------------------------

    def syscall(self, nr: int, *args: int, keep: Any = None) -> Any:
        """Make syscall *nr* with up to six raw integer arguments; return its result.

        Pointers are the caller's responsibility; pass the objects they
        point into as *keep* so they outlive the call.
        """
        if len(args) > 6:
            raise TypeError(f"a syscall takes at most 6 arguments, got {len(args)}")
        return self._run(Op(syscall_number(nr), [word(a) for a in args], keep=keep))

    # -- reads and writes ---------------------------------------------------------

    def read(self, fd: int, n: int) -> Any:
        """Read up to *n* bytes at the file position (like ``os.read``)."""
        return self._stream_read(fd, n, _NR_READ)

    def pread(self, fd: int, n: int, offset: int) -> Any:
        """Read up to *n* bytes at *offset* (like ``os.pread``)."""
        return self._bytes_result(n, NR["pread64"], lambda a, n: (_fd(fd), a, n, _off(offset)))

    def readinto(self, fd: int, buffer: Any) -> Any:
        """Read into a writable *buffer* at the file position; return the byte count."""
        return self._stream_readinto(fd, buffer, _NR_READ)

    def preadinto(self, fd: int, buffer: Any, offset: int) -> Any:
        """Read into a writable *buffer* at *offset*; return the byte count."""
        raw_fd, off = _fd(fd), _off(offset)
        view = pin(buffer, writable=True)
        return self._run(Op(NR["pread64"], (raw_fd, _addr(view), len(view), off), keep=(view, buffer), pins=(view,)))

    def write(self, fd: int, data: Any) -> Any:
        """Write *data* at the file position (like ``os.write``); return the byte count."""
        raw_fd = _fd(fd)
        view = pin(data)
        return self._run(Op(NR["write"], (raw_fd, _addr(view), len(view)), keep=(view, data), pins=(view,)))

    def pwrite(self, fd: int, data: Any, offset: int) -> Any:
        """Write *data* at *offset* (like ``os.pwrite``)."""
        raw_fd, off = _fd(fd), _off(offset)
        view = pin(data)
        return self._run(Op(NR["pwrite64"], (raw_fd, _addr(view), len(view), off), keep=(view, data), pins=(view,)))

    # -- many at once: one submission, one wake-up, one result list ------------------------

    def pread_many(self, fd: int, size: int, offsets: Sequence[int]) -> Any:
        """Read up to *size* bytes at each of *offsets*; a list of bytes, as ``os.pread`` each would give.

        One bulk submission: the entries travel the channel like any others,
        but the front end pays per operation, not per entry. The first
        failed entry raises its ``OSError`` (the others have still run).
        """
        size = _length(size)
        n = len(offsets)
        new_bytes = fastpath.lib.new_bytes
        if new_bytes is not None and n:
            # Each read fills its own new bytes object in place, as os.pread does (see ReadStream).
            table = fastpath.ffi.new("uint64_t[]", n)
            objs = new_bytes(n, size, _addr(table))

            def finish_in_place(results: list[int]) -> list[bytes]:
                _raise_first(results)
                return _as_read(objs, results, size)

            return self._run_bulk(BulkOp(NR["pread64"], _fd(fd), 0, 0, size, offsets, n, (objs, table), finish_in_place,
                                         table))  # fmt: skip
        buf = self._take_scratch(n * size)
        view = ffi.from_buffer(buf)

        def finish(results: list[int]) -> list[bytes]:
            try:
                _raise_first(results)
                with memoryview(buf) as mv:
                    if n and min(results) == size:
                        return [mv[i : i + size].tobytes() for i in range(0, n * size, size)]
                    return [mv[i * size : i * size + r].tobytes() for i, r in enumerate(results)]
            finally:
                self._give_scratch(buf)  # only once every entry completed: the kernel is done with it

        return self._run_bulk(BulkOp(NR["pread64"], _fd(fd), _addr(view), size, size, offsets, n, (view, buf), finish))

    def _take_scratch(self, n: int) -> bytearray:
        """A reusable buffer of at least *n* bytes (fresh allocations of large buffers cost page faults)."""
        pool: list[bytearray] = self.__dict__.setdefault("_scratch", [])
        for i, b in enumerate(pool):
            if len(b) >= n:
                return pool.pop(i)
        return bytearray(max(n, 1))

    def _give_scratch(self, buf: bytearray) -> None:
        pool: list[bytearray] = self.__dict__.setdefault("_scratch", [])
        if len(pool) < _SCRATCH_KEEP and len(buf) <= _SCRATCH_MAX:
            pool.append(buf)

    def preadinto_many(self, fd: int, buffer: Any, size: int, offsets: Sequence[int]) -> Any:
        """Read entry *i* into ``buffer[i*size:(i+1)*size]`` from ``offsets[i]``; a list of byte counts."""
        return self._rw_many(NR["pread64"], fd, buffer, size, offsets)

    def pwrite_many(self, fd: int, data: Any, size: int, offsets: Sequence[int]) -> Any:
        """Write ``data[i*size:(i+1)*size]`` at ``offsets[i]`` for every *i*; a list of byte counts."""
        return self._rw_many(NR["pwrite64"], fd, data, size, offsets)

    def _rw_many(self, nr: int, fd: int, buffer: Any, size: int, offsets: Sequence[int], first: int = 0) -> Any:
        """``pread64``/``pwrite64`` of entry *i*, from *first* on, into or from ``buffer[i*size:(i+1)*size]``
        at ``offsets[i]``; a list of their byte counts."""
        raw_fd, n = _fd(fd), len(offsets)
        reads = nr == NR["pread64"]
        view = pin(buffer, writable=reads)
        try:
            if size < 0 or n * size > len(view):
                what = f"buffer of {len(view)} bytes cannot hold {n} reads" if reads else \
                    f"data of {len(view)} bytes holds fewer than {n} blocks"  # fmt: skip
                raise ValueError(f"{what} of {size} bytes")
        except BaseException:
            unpin((view,))
            raise
        rest = offsets[first:] if first else offsets
        return self._run_bulk(BulkOp(nr, raw_fd, _addr(view) + first * size, size, size, rest, n - first,
                                     (view, buffer), _checked_counts, pins=(view,)))  # fmt: skip

    def _iov(self, buffers: Sequence[Any], writable: bool) -> tuple[int, int, Any, tuple[Any, ...]]:
        """The iovec table of *buffers*: its address, its length, what to keep, the views to release."""
        views: list[Any] = []
        try:
            for b in buffers:
                views.append(pin(b, writable=writable))
        except BaseException:
            unpin(tuple(views))
            raise
        table = native.alloc(_IOVEC.size * max(1, len(views)))
        tview = ffi.buffer(table)
        for i, v in enumerate(views):
            _IOVEC.pack_into(tview, i * _IOVEC.size, _addr(v), len(v))
        return _addr(table), len(views), (table, views, buffers), tuple(views)

    def readv(self, fd: int, buffers: Sequence[Any]) -> Any:
        """Scatter-read into *buffers* (like ``os.readv``)."""
        raw_fd = _fd(fd)
        addr, n, keep, pins = self._iov(buffers, True)
        return self._run(Op(NR["readv"], (raw_fd, addr, n), keep=keep, pins=pins))

    def writev(self, fd: int, buffers: Sequence[Any]) -> Any:
        """Gather-write *buffers* (like ``os.writev``)."""
        raw_fd = _fd(fd)
        addr, n, keep, pins = self._iov(buffers, False)
        return self._run(Op(NR["writev"], (raw_fd, addr, n), keep=keep, pins=pins))

    def preadv(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> Any:
        """Scatter-read at *offset* (like ``os.preadv``)."""
        raw_fd, off = _fd(fd), _off(offset)
        addr, n, keep, pins = self._iov(buffers, True)
        return self._run(Op(NR["preadv2"], (raw_fd, addr, n, off, 0, flags), keep=keep, pins=pins))

    def pwritev(self, fd: int, buffers: Sequence[Any], offset: int, flags: int = 0) -> Any:
        """Gather-write at *offset* (like ``os.pwritev``)."""
        raw_fd, off = _fd(fd), _off(offset)
        addr, n, keep, pins = self._iov(buffers, False)
        return self._run(Op(NR["pwritev2"], (raw_fd, addr, n, off, 0, flags), keep=keep, pins=pins))

    # -- files -------------------------------------------------------------------------------

    def openat(self, dir_fd: int, path: PathLike, flags: int, mode: int = 0o777) -> Any:
        """Open *path* relative to *dir_fd*; return the descriptor (``O_CLOEXEC`` is the caller's choice)."""
        p = _path(path)
        return self._run(Op(NR["openat"], (_fd(dir_fd), _addr(p), flags, mode), keep=p, filename=path))

    def open(self, path: PathLike, flags: int, mode: int = 0o777, *, dir_fd: int = AT_FDCWD) -> Any:
        """Open *path* (like ``os.open``, which also adds ``O_CLOEXEC``)."""
        return self.openat(dir_fd, path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> Any:
        """Close *fd*."""
        return self._run(Op(NR["close"], (_fd(fd),), finish=_none))

    def fsync(self, fd: int) -> Any:
        """Flush *fd*'s data and metadata to storage."""
        return self._run(Op(NR["fsync"], (_fd(fd),), finish=_none))

    def fdatasync(self, fd: int) -> Any:
        """Flush *fd*'s data to storage."""
        return self._run(Op(NR["fdatasync"], (_fd(fd),), finish=_none))

    def ftruncate(self, fd: int, length: int) -> Any:
        """Truncate *fd* to *length* bytes."""
        return self._run(Op(NR["ftruncate"], (_fd(fd), _off(length)), finish=_none))

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> Any:
        """Allocate space (``fallocate(2)``)."""
        return self._run(Op(NR["fallocate"], (_fd(fd), mode, _off(offset), _off(length)), finish=_none))

    def fadvise(self, fd: int, offset: int, length: int, advice: int) -> Any:
        """Declare an access pattern (like ``os.posix_fadvise``)."""
        return self._run(Op(NR["fadvise64"], (_fd(fd), _off(offset), _off(length), advice), finish=_none))

    def sync_file_range(self, fd: int, offset: int, nbytes: int, flags: int) -> Any:
        """Sync part of a file (``sync_file_range(2)``)."""
        return self._run(Op(NR["sync_file_range"], (_fd(fd), _off(offset), _off(nbytes), flags), finish=_none))

    def _stat_op(self, nr: int, args: Callable[[int], Sequence[int]], keep: Any, filename: Any) -> Any:
        buf = native.alloc(lx.STAT_SIZE)
        return self._run(Op(nr, args(_addr(buf)), keep=(buf, keep), filename=filename,
                            finish=lambda r: _stat_result(bytes(ffi.buffer(buf, lx.STAT_SIZE)))))  # fmt: skip

    def stat(self, path: PathLike) -> Any:
        """``os.stat(path)`` through KSVC (Tier 1: STATX converted to ``struct stat``)."""
        p = _path(path)
        return self._stat_op(NR["stat"], lambda a: (_addr(p), a), p, path)

    def lstat(self, path: PathLike) -> Any:
        """``os.lstat(path)``."""
        p = _path(path)
        return self._stat_op(NR["lstat"], lambda a: (_addr(p), a), p, path)

    def fstat(self, fd: int) -> Any:
        """``os.fstat(fd)``."""
        return self._stat_op(NR["fstat"], lambda a: (_fd(fd), a), None, None)

    def statx(self, path: PathLike, flags: int = 0, mask: int = lx.STATX_BASIC_STATS, *, dir_fd: int = AT_FDCWD) -> Any:
        """The raw 256-byte ``struct statx`` for *path* (``statx(2)``)."""
        p = _path(path)
        buf = native.alloc(lx.STATX_SIZE)
        return self._run(Op(NR["statx"], (_fd(dir_fd), _addr(p), flags, mask, _addr(buf)), keep=(p, buf),
                            filename=path, finish=lambda r: bytes(ffi.buffer(buf, lx.STATX_SIZE))))  # fmt: skip

    def _path_op(self, name: str, path: PathLike, *rest: int) -> Any:
        p = _path(path)
        return self._run(Op(NR[name], (_addr(p), *rest), keep=p, filename=path, finish=_none))

    def _two_paths(self, name: str, src: PathLike, dst: PathLike) -> Any:
        a, b = _path(src), _path(dst)
        return self._run(Op(NR[name], (_addr(a), _addr(b)), keep=(a, b), filename=src, finish=_none))

    def unlink(self, path: PathLike) -> Any:
        """Remove a file."""
        return self._path_op("unlink", path)

    def rmdir(self, path: PathLike) -> Any:
        """Remove an empty directory."""
        return self._path_op("rmdir", path)

    def mkdir(self, path: PathLike, mode: int = 0o777) -> Any:
        """Create a directory."""
        return self._path_op("mkdir", path, mode)

    def rename(self, src: PathLike, dst: PathLike) -> Any:
        """Rename *src* to *dst*."""
        return self._two_paths("rename", src, dst)

    def link(self, src: PathLike, dst: PathLike) -> Any:
        """Create hard link *dst* to *src*."""
        return self._two_paths("link", src, dst)

    def symlink(self, src: PathLike, dst: PathLike) -> Any:
        """Create symbolic link *dst* pointing to *src*."""
        return self._two_paths("symlink", src, dst)

    def readlink(self, path: PathLike) -> Any:
        """The target of symbolic link *path*, as bytes."""
        p = _path(path)
        buf = native.alloc(4096)
        return self._run(Op(NR["readlink"], (_addr(p), _addr(buf), 4096), keep=(p, buf), filename=path,
                            finish=lambda r: bytes(ffi.buffer(buf, r))))  # fmt: skip

    def access(self, path: PathLike, mode: int) -> Any:
        """True when *path* is accessible with *mode* (like ``os.access``)."""
        p = _path(path)
        return self._run(Op(NR["access"], (_addr(p), mode), keep=p, finish=lambda r: True, on_error=lambda e: False))

    def setxattr(self, path: PathLike, name: str | bytes, value: bytes, flags: int = 0) -> Any:
        """Set extended attribute *name* of *path*."""
        p, n = _path(path), _path(name)
        v = pin(value)
        return self._run(Op(NR["setxattr"], (_addr(p), _addr(n), _addr(v), len(v), flags), keep=(p, n, v, value),
                            filename=path, finish=_none, pins=(v,)))  # fmt: skip

    def getxattr(self, path: PathLike, name: str | bytes, size: int = 65536) -> Any:
        """Extended attribute *name* of *path*, as bytes."""
        p, n = _path(path), _path(name)
        buf = native.alloc(size)
        return self._run(Op(NR["getxattr"], (_addr(p), _addr(n), _addr(buf), size), keep=(p, n, buf),
                            filename=path, finish=lambda r: bytes(ffi.buffer(buf, r))))  # fmt: skip

    # -- descriptors (Tier 2) ---------------------------------------------------------------------

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> Any:
        """``fcntl(2)`` with an integer argument; return its result."""
        return self._run(Op(NR["fcntl"], (_fd(fd), cmd, _u(arg))))

    def lseek(self, fd: int, pos: int, how: int) -> Any:
        """Move the file position (like ``os.lseek``)."""
        return self._run(Op(NR["lseek"], (_fd(fd), _off(pos), how)))

    def dup(self, fd: int) -> Any:
        """Duplicate *fd* (the new descriptor is not inheritable only if you set it so)."""
        return self._run(Op(NR["dup"], (_fd(fd),)))

    def dup3(self, fd: int, fd2: int, flags: int = 0) -> Any:
        """Duplicate *fd* onto *fd2*."""
        return self._run(Op(NR["dup3"], (_fd(fd), _fd(fd2), flags)))

    def flock(self, fd: int, operation: int) -> Any:
        """Apply or remove an advisory lock."""
        return self._run(Op(NR["flock"], (_fd(fd), operation), finish=_none))

    def fchmod(self, fd: int, mode: int) -> Any:
        """Change *fd*'s mode."""
        return self._run(Op(NR["fchmod"], (_fd(fd), mode), finish=_none))

    def getcwd(self) -> Any:
        """The current directory, as str."""
        buf = native.alloc(4096)
        return self._run(Op(NR["getcwd"], (_addr(buf), 4096), keep=buf,
                            finish=lambda r: os.fsdecode(bytes(ffi.buffer(buf, r)).rstrip(b"\0"))))  # fmt: skip

    def getrandom(self, n: int, flags: int = 0) -> Any:
        """*n* random bytes (``getrandom(2)``)."""
        return self._bytes_result(n, NR["getrandom"], lambda a, n: (a, n, flags))

    def pipe(self, flags: int = os.O_CLOEXEC) -> Any:
        """A pipe as ``(read_fd, write_fd)`` (like ``os.pipe2``)."""
        fds = ffi.new("int[2]")
        return self._run(Op(NR["pipe2"], (_addr(fds), flags), keep=fds, finish=lambda r: (fds[0], fds[1])))

    # -- sockets --------------------------------------------------------------------------------

    def socket(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM, proto: int = 0) -> Any:  # noqa: A002
        """A new socket descriptor (add ``SOCK_CLOEXEC``/``SOCK_NONBLOCK`` to *type* as needed)."""
        return self._run(Op(NR["socket"], (family, type, proto)))

    def bind(self, fd: int, address: Any, family: int | None = None) -> Any:
        """Bind *fd* to *address* (``(host, port)``, a 4-tuple for IPv6, or a path)."""
        raw = sockaddr.encode(family or _family_of(address), address)
        mem = ffi.from_buffer(raw)
        return self._run(Op(NR["bind"], (_fd(fd), _addr(mem), len(raw)), keep=(mem, raw), finish=_none))

    def connect(self, fd: int, address: Any, family: int | None = None) -> Any:
        """Connect *fd* to *address*."""
        raw = sockaddr.encode(family or _family_of(address), address)
        mem = ffi.from_buffer(raw)
        return self._run(Op(NR["connect"], (_fd(fd), _addr(mem), len(raw)), keep=(mem, raw), finish=_none))

    def listen(self, fd: int, backlog: int = 128) -> Any:
        """Mark *fd* as listening."""
        return self._run(Op(NR["listen"], (_fd(fd), backlog), finish=_none))

    def accept(self, fd: int, flags: int = _socket.SOCK_CLOEXEC) -> Any:
        """Accept a connection: ``(new_fd, peer_address)``."""
        buf = native.alloc(sockaddr.SOCKADDR_STORAGE)
        length = ffi.new("unsigned int *", sockaddr.SOCKADDR_STORAGE)
        return self._run(Op(NR["accept4"], (_fd(fd), _addr(buf), _addr(length), flags), keep=(buf, length),
                            finish=lambda r: (r, sockaddr.decode(bytes(ffi.buffer(buf, length[0]))))))  # fmt: skip

    def send(self, fd: int, data: Any, flags: int = 0) -> Any:
        """Send *data*; return the byte count."""
        raw_fd = _fd(fd)
        view = pin(data)
        return self._run(Op(NR["sendto"], (raw_fd, _addr(view), len(view), flags), keep=(view, data), pins=(view,)))

    def sendto(self, fd: int, data: Any, address: Any, flags: int = 0) -> Any:
        """Send *data* to *address* (Tier 2: io_uring's SEND carries no address here)."""
        raw_fd, raw = _fd(fd), sockaddr.encode(_family_of(address), address)
        mem = ffi.from_buffer(raw)
        view = pin(data)
        return self._run(Op(NR["sendto"], (raw_fd, _addr(view), len(view), flags, _addr(mem), len(raw)),
                            keep=(view, data, mem, raw), pins=(view,)))  # fmt: skip

    def recv(self, fd: int, n: int, flags: int = 0) -> Any:
        """Receive up to *n* bytes."""
        return self._stream_read(fd, n, _NR_RECVFROM, flags)

    def recv_into(self, fd: int, buffer: Any, flags: int = 0) -> Any:
        """Receive into *buffer*; return the byte count."""
        return self._stream_readinto(fd, buffer, _NR_RECVFROM, flags)

    def shutdown(self, fd: int, how: int) -> Any:
        """Shut down part of a full-duplex connection."""
        return self._run(Op(NR["shutdown"], (_fd(fd), how), finish=_none))

    def _name_op(self, name: str, fd: int) -> Any:
        buf = native.alloc(sockaddr.SOCKADDR_STORAGE)
        length = ffi.new("unsigned int *", sockaddr.SOCKADDR_STORAGE)
        return self._run(Op(NR[name], (_fd(fd), _addr(buf), _addr(length)), keep=(buf, length),
                            finish=lambda r: sockaddr.decode(bytes(ffi.buffer(buf, length[0])))))  # fmt: skip

    def getsockname(self, fd: int) -> Any:
        """The address *fd* is bound to."""
        return self._name_op("getsockname", fd)

    def getpeername(self, fd: int) -> Any:
        """The address *fd* is connected to."""
        return self._name_op("getpeername", fd)

    def setsockopt(self, fd: int, level: int, option: int, value: int | bytes) -> Any:
        """Set a socket option (an int is passed as a C int)."""
        raw = struct.pack("<i", value) if isinstance(value, int) else bytes(value)
        mem = ffi.from_buffer(raw)
        return self._run(Op(NR["setsockopt"], (_fd(fd), level, option, _addr(mem), len(raw)), keep=(mem, raw),
                            finish=_none))  # fmt: skip

    def getsockopt(self, fd: int, level: int, option: int, buflen: int = 0) -> Any:
        """A socket option: an int, or *buflen* raw bytes when *buflen* is given."""
        size = buflen or 4
        buf = native.alloc(size)
        length = ffi.new("unsigned int *", size)

        def finish(_: int) -> Any:
            raw = bytes(ffi.buffer(buf, length[0]))
            return raw if buflen else struct.unpack("<i", raw.ljust(4, b"\0"))[0]

        return self._run(Op(NR["getsockopt"], (_fd(fd), level, option, _addr(buf), _addr(length)), keep=(buf, length),
                            finish=finish))  # fmt: skip


MAX_RW_COUNT = 0x7FFFF000
"""The most one read or write moves on Linux; longer requests are clamped, as the kernel does."""


def _length(n: Any) -> int:
    """A byte count as ``os.read`` takes it: an int (TypeError otherwise), not negative (EINVAL, as os gives)."""
    v = operator.index(n)
    if v < 0:
        raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: negative length {v}")
    if v > _C_LONG_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return min(v, MAX_RW_COUNT)


def _none(_: int) -> None:
    return None


def _noop() -> None:
    return None


def _family_of(address: Any) -> int:
    if isinstance(address, (str, bytes)):
        return _socket.AF_UNIX
    if len(address) == 4 or ":" in str(address[0]):
        return _socket.AF_INET6
    return _socket.AF_INET
