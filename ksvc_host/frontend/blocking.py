"""The blocking front end: ``with ksvc.open() as k: k.pread(fd, 4096, 0)``."""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ksvc_host.abi import layout as L
from ksvc_host.abi import linux as lx
from ksvc_host.abi.syscalls import SYSCALL_NAMES
from ksvc_host.abi.syscalls import SYSCALLS as NR
from ksvc_host.errors import DispatcherFailed, NotOffloaded, RefusedSyscall
from ksvc_host.frontend.core import BULK_MAX, STILL_IN_KERNEL, BulkWaiter, Completer, Waiter
from ksvc_host.frontend.operations import SETTLE_S, BulkOp, LateResult, Op, Operations, ReadStream, oserror, unpin
from ksvc_host.frontend.raw import RawChannel
from ksvc_host.frontend.tier0 import SharedPageReads
from ksvc_host.instance import Instance
from ksvc_host.lanes import ThreadLanes
from ksvc_host.routing import is_refused
from ksvc_host.traits import FixedFilesIoBackend, FixedFileTable, Lane, Tier

_NR_READ = NR["read"]
_NR_WRITE = NR["write"]
_NR_PREAD = NR["pread64"]
_NR_PWRITE = NR["pwrite64"]
_NR_RECVFROM = NR["recvfrom"]
_NR_SENDTO = NR["sendto"]


def check_route(instance: Instance, nr: int) -> None:
    """Raise the clear error for a syscall that the channel will not execute."""
    if instance.router.route(nr).tier is not Tier.LEGACY:
        return
    name = SYSCALL_NAMES.get(nr)
    label = f"{name} ({nr})" if name else f"number {nr}"
    if is_refused(nr):
        raise RefusedSyscall(
            errno.EPERM, f"syscall {label} alters the process; KSVC never executes it: call it directly"
        )
    if name is None:
        raise NotOffloaded(errno.ENOSYS, f"unknown syscall number {nr} (not in the x86-64 table)")
    raise NotOffloaded(errno.ENOSYS, f"syscall {label} is not offloaded by KSVC (Tier 3): call it directly")


class Ksvc(SharedPageReads, Operations):
    """Blocking helpers over one instance; results and errors as ``os.*`` gives them.

    Thread-safe: any number of threads may call helpers at once. Each
    calling thread makes the calls its lane takes (:mod:`ksvc_host.lanes`)
    itself, in one C call; everything else goes through the shared channel
    to the dispatcher.
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._lanes = ThreadLanes(instance, settle_s=SETTLE_S)
        self._completer = Completer(instance)
        self._completer.on_failed = self._lanes.fail
        self._buffers = instance.buffer_provider
        self._page = instance.shared_page
        self._late: dict[int, bytearray] = {}
        self.raw = RawChannel(instance, self._completer, self._lanes)
        """The raw entry interface (unsafe: pointers are the caller's responsibility)."""
        backend = instance.io_backend
        self._fixed_files: FixedFileTable | None = (
            backend.fixed_files if isinstance(backend, FixedFilesIoBackend) else None
        )

    def _run(self, op: Op) -> Any:
        lane = self._lanes.mine()
        if lane is not None:
            plan = self._lanes.plan
            pre = None
            try:
                result = lane.call(op.nr, *op.args)
                if result is None and plan is not None and (pre := plan.prebuilt(op.nr, op.args, op.keep)):
                    result = lane.call_sqe(pre.keep, pre.sqe)  # the host's SQE, same lane
            except BaseException:
                self._lane_gave_up(lane, op)
                raise
            if result is not None:
                return op.outcome(result if pre is None else pre.result(result))
        return self._run_shared(op)

    def _lane_gave_up(self, lane: Any, op: Op | None) -> None:
        """A lane call ended by an exception: keep what the kernel did after all; name a failed instance.

        When a signal handler's exception ended the call, the lane cancelled
        it and waited for the kernel's answer (as :meth:`_settle` does for
        the shared channel): bytes a stream read got are kept for the next
        read of that descriptor, and memory of a call the kernel still holds
        is never freed. A call cancelled because the dispatcher failed raises
        :class:`DispatcherFailed`, as on the shared channel.
        """
        late, dead = self._lanes.interrupted(lane)
        if late is not None:
            fd, result, data = late
            if data is not None:
                self._late.setdefault(fd & lx.U32_MASK, bytearray()).extend(data)
            elif op is not None:
                self._keep_late(op, result)
            if op is not None:
                op.abandon()
        elif dead and op is not None:
            STILL_IN_KERNEL.append(op.keep)
        failure = self._completer.failure
        if failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {failure!r}; open a new instance")

    # The calls programs make in loops: straight to the calling thread's lane when it takes them.

    def pread(self, fd: int, n: int, offset: int) -> Any:
        lane = self._lanes.mine()
        if lane is not None:
            try:
                data = lane.read(_NR_PREAD, fd, n, offset)
            except BaseException:
                self._lane_gave_up(lane, None)
                raise
            if data is not None:
                return data
        return super().pread(fd, n, offset)

    def read(self, fd: int, n: int) -> Any:
        if not self._late:  # bytes kept from an interrupted read come first (the general path)
            data = self._lane_io("read", _NR_READ, fd, n, 0)
            if data is not None:
                return data
        return super().read(fd, n)

    def recv(self, fd: int, n: int, flags: int = 0) -> Any:
        if not self._late:
            data = self._lane_io("read", _NR_RECVFROM, fd, n, flags)
            if data is not None:
                return data
        return super().recv(fd, n, flags)

    def pwrite(self, fd: int, data: Any, offset: int) -> Any:
        count = self._lane_io("write", _NR_PWRITE, fd, data, offset)
        return count if count is not None else super().pwrite(fd, data, offset)

    def write(self, fd: int, data: Any) -> Any:
        count = self._lane_io("write", _NR_WRITE, fd, data, 0)
        return count if count is not None else super().write(fd, data)

    def send(self, fd: int, data: Any, flags: int = 0) -> Any:
        count = self._lane_io("write", _NR_SENDTO, fd, data, flags)
        return count if count is not None else super().send(fd, data, flags)

    def _lane_io(self, how: str, nr: int, fd: int, x: Any, y: Any) -> Any:
        """``lane.read`` or ``lane.write`` on this thread's lane; ``None`` when it does not take the call."""
        lane = self._lanes.mine()
        if lane is None:
            return None
        try:
            return lane.read(nr, fd, x, y) if how == "read" else lane.write(nr, fd, x, y)
        except BaseException:
            self._lane_gave_up(lane, None)
            raise

    def _run_shared(self, op: Op) -> Any:
        """Run *op* through the shared channel and the dispatcher."""
        try:
            check_route(self.instance, op.nr)
        except OSError:
            op.abandon()  # never submitted
            raise
        c = self._completer
        w = c.new_waiter(op.keep)
        c.submit_all(((op.nr, op.args, 0),), (w,))
        try:
            c.wait(w)
        except BaseException:
            # Interrupted (KeyboardInterrupt, or whatever a signal handler raised): the interrupt is the
            # caller's, as with os.read. The operation is cancelled in the kernel first, so that nothing
            # it does later goes unseen.
            self._settle(op, w)
            del op, w  # the exception's traceback keeps this frame, not the operation's buffers
            raise
        if w.flags == -1 and c.failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {c.failure!r}; open a new instance")
        return op.outcome(w.result)

    def _settle(self, op: Op, w: Waiter) -> None:
        """Cancel the operation of an interrupted call and wait (bounded) for the kernel's answer.

        A read that completed after all keeps its bytes for the next read
        of that descriptor. Should the kernel still hold the operation after
        :data:`SETTLE_S` (a call stuck on a worker), its buffers stay
        referenced by the waiter until it ends, and its result is handled
        then.
        """
        c = self._completer
        if w.done:
            self._keep_late(op, w.result)
            op.abandon()
            return
        if not w.corr_id:
            return  # never submitted
        w.callback = LateResult(self, op)
        self._completer.dispatcher.request_cancel(w.corr_id)
        deadline = time.monotonic() + SETTLE_S
        try:
            c.wait_until(lambda: w.done or time.monotonic() > deadline or c.failure is not None)
        except BaseException:  # a second interrupt, or a failure: the late result is still handled
            return

    def _run_bulk(self, op: BulkOp) -> Any:
        if op.n == 0:
            return op.done([])
        try:
            check_route(self.instance, op.nr)
        except OSError:
            unpin(op.pins)  # never submitted
            raise
        out: list[int] = []
        for start in range(0, op.n, BULK_MAX):  # a bulk group holds BULK_MAX entries
            n = min(BULK_MAX, op.n - start)
            offs = op.offsets[start : start + n] if op.offsets is not None else None
            addrs = op.addrs + start if op.addrs is not None else None
            c = self._completer
            b = c.new_bulk(op.nr, op.fd, op.addr0 + start * op.stride, op.stride, op.length, offs, n, op.keep,
                           addrs=addrs)  # fmt: skip
            c.submit_bulk(b)
            out.extend(self._collect_bulk(b))
        return op.done(out)

    def _collect_bulk(self, b: BulkWaiter) -> list[int]:
        """Wait for every entry of *b*; their results."""
        if not b.done:
            if b.event is not None:
                while not b.done:
                    b.event.wait()
            else:
                self._completer.wait_until(lambda: b.done)
        return self._completer.bulk_results(b)

    def pread_iter(self, fd: int, size: int, offsets: Iterable[int], *, depth: int = 64) -> Iterator[bytes]:
        """Read up to *size* bytes at each of *offsets*; yield each result in order, as ``os.pread`` gives it.

        A stream: at most *depth* reads are in flight, and the kernel works on
        the next ones while the caller handles these (with a kernel SQ thread,
        the ``sqpoll`` backend, on another core). *offsets* may be any
        iterable, consumed as the stream goes. The first failed read raises
        its ``OSError`` when reached; the results before it are yielded first.
        """
        check_route(self.instance, NR["pread64"])
        if self._lanes.mine() is not None and not self._completer.pipelined:
            # On the caller's own ring, page-cached reads run inside the submitting io_uring_enter: a batch
            # of depth entries per enter; there is no other thread to keep fed.
            return self._lane_stream(ReadStream(fd, size, offsets, depth))
        parts = ReadStream.PIPELINED_PARTS if self._completer.pipelined else 1
        return self._stream(ReadStream(fd, size, offsets, depth, parts))

    def _lane_stream(self, stream: ReadStream) -> Iterator[bytes]:
        """The stream on the caller's lane: one C call per window of reads. Offsets the lane does not take
        (a descriptor it cannot read exactly as os.pread would, a negative offset) and all after them go
        through the shared channel, in order (as the asyncio front end's lane stream does)."""
        while chunk := stream.take(stream.step):
            got = self._lane_many(stream.fd, stream.size, chunk)
            if got is None:
                yield from self._stream(stream.rest(chunk))
                return
            for value in got:
                if value.__class__ is int:
                    raise oserror(-value)
                yield value

    def pread_many(self, fd: int, size: int, offsets: Sequence[int]) -> Any:
        got = self._lane_many(fd, size, offsets)
        if got is None:
            return super().pread_many(fd, size, offsets)
        for value in got:
            if value.__class__ is int:
                raise oserror(-value)  # the first failure; every entry has run
        return got

    def preadinto_many(self, fd: int, buffer: Any, size: int, offsets: Sequence[int]) -> Any:
        got = self._lane_rw_many(_NR_PREAD, fd, buffer, size, offsets)
        return got if got is not None else super().preadinto_many(fd, buffer, size, offsets)

    def pwrite_many(self, fd: int, data: Any, size: int, offsets: Sequence[int]) -> Any:
        got = self._lane_rw_many(_NR_PWRITE, fd, data, size, offsets)
        return got if got is not None else super().pwrite_many(fd, data, size, offsets)

    def _lane_rw_many(self, nr: int, fd: int, buffer: Any, size: int, offsets: Sequence[int]) -> list[int] | None:
        """The bulk into or from one buffer on the caller's lane (None: it does not take it, or there is none)."""
        if not offsets:
            return None
        got = self._on_lane(lambda lane: lane.rw_many(nr, fd, buffer, size, offsets))
        if got is not None:
            for value in got:
                if value < 0:
                    raise oserror(-value)  # the first failure; every entry has run
        return got

    def _lane_many(self, fd: int, size: int, offsets: Sequence[int]) -> list[Any] | None:
        return self._on_lane(lambda lane: lane.read_many(_NR_PREAD, fd, size, offsets))

    def _on_lane(self, run: Callable[[Lane], list[Any] | None]) -> list[Any] | None:
        """A bulk on the caller's lane: what *run(lane)* returns (None: no lane, or it does not take the bulk)."""
        lane = self._lanes.mine()
        if lane is None:
            return None
        try:
            return run(lane)
        except BaseException:
            self._lane_gave_up(lane, None)
            raise

    def _stream(self, stream: ReadStream) -> Iterator[bytes]:
        # Left early, parts still in flight keep their buffers until their completions are reaped.
        c = self._completer
        out: deque[tuple[BulkWaiter, BulkOp]] = deque()
        while True:
            while len(out) < stream.parts_in_flight and (part := self._next_part(stream)) is not None:
                c.submit_bulk(part[0])  # the kernel reads these while we convert the oldest below
                out.append(part)
            if not out:
                return
            b, op = out.popleft()
            values, err = op.done(self._collect_bulk(b))
            yield from values
            if err:
                raise oserror(err)  # made here: no frame of ours holds it

    def batch(self, *, linked: bool = False) -> Batch:
        """Collect operations and submit them in one go (see :class:`Batch`)."""
        return Batch(self, linked=linked)

    def run_batch(self, ops: Sequence[Op], flags: Sequence[int] | None = None) -> list[Any]:
        """Submit *ops* at once, wait for all, return each outcome (an exception object on error)."""
        for op in ops:
            check_route(self.instance, op.nr)
        waiters = [self._completer.new_waiter(op.keep) for op in ops]
        fl = flags or [0] * len(ops)
        self._completer.submit_all([(op.nr, op.args, f) for op, f in zip(ops, fl, strict=True)], waiters)
        out: list[Any] = []
        for op, w in zip(ops, waiters, strict=True):
            self._completer.wait(w)
            try:
                out.append(op.outcome(w.result))
            except OSError as exc:
                out.append(exc)
        failure = self._completer.failure
        if failure is not None and any(w.flags == -1 for w in waiters):  # as a single call reports it
            raise DispatcherFailed(f"the dispatcher failed: {failure!r}; open a new instance")
        return out

    def accept_iter(self, fd: int, flags: int = 0o2000000) -> Iterator[int]:
        """Accepted descriptors from ONE multishot accept submission, as connections arrive.

        Needs the ``multishot-accept`` io feature (``io_backend="...+multishot-accept"``);
        without it this raises ``OSError(EOPNOTSUPP)``. Closing the generator cancels the
        accept in the kernel; descriptors accepted after that are closed, not leaked.
        *flags* are accept4's (``SOCK_CLOEXEC`` by default).
        """
        nr = NR["accept4"]
        check_route(self.instance, nr)
        arrived: deque[tuple[int, int]] = deque()
        w = self._completer.new_waiter(None, lambda corr, res, fl: arrived.append((res, fl)))
        self._completer.submit_all(((nr, (fd, 0, 0, flags, 0, 0), L.SUBMIT_FLAG_MULTISHOT),), (w,))
        try:
            while True:
                self._completer.wait_until(lambda: bool(arrived) or w.done)
                while arrived:
                    res, fl = arrived.popleft()
                    more = fl > 0 and fl & L.COMPLETION_FLAG_MORE
                    if res < 0:
                        if more:
                            continue
                        if res == -errno.ECANCELED:
                            return
                        raise oserror(-res)
                    yield res
                    if not more:
                        return
        finally:
            if not w.done:
                self._completer.dispatcher.request_cancel(w.corr_id)
                self._completer.wait_until(lambda: w.done)
                for res, _ in arrived:
                    if res >= 0:
                        os.close(res)

    @property
    def fixed_files(self) -> FixedFileTable | None:
        """The ``fixed-files`` feature's registry (``register(fd)``, ``unregister(fd)``), or ``None``."""
        return self._fixed_files

    # Lifetime ----------------------------------------------------------------------------

    def close(self, fd: int | None = None, *, timeout: float = 5.0) -> Any:
        """``close(fd)`` closes a descriptor; ``close()`` closes the instance (drains first)."""
        if fd is not None:
            return super().close(fd)
        self.instance.close(timeout)  # closes the lanes too
        self._completer.take_abandoned()
        self._completer.fail_pending(-errno.ECANCELED)
        self.instance.channel.close()  # last: the completions above were read from it
        return None

    def __enter__(self) -> Ksvc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batch(Operations):
    """Operations collected, then submitted together with :meth:`run`.

    Each helper returns the :class:`Op` it queued; :meth:`run` returns the
    outcomes in order (an ``OSError`` instance where one failed). With
    ``linked=True`` every entry but the last carries LINKED: each starts
    only after the previous succeeded, and a failure cancels the rest.
    """

    def __init__(self, k: Ksvc, *, linked: bool = False) -> None:
        self._k = k
        self._buffers = k._buffers
        self._ops: list[Op] = []
        self._flags: list[int] = []
        self._late: dict[int, bytearray] = {}  # never filled: a batch's reads always go to the kernel
        self.linked = linked
        self._drain_next = False

    def _run(self, op: Op) -> Op:
        self._ops.append(op)
        self._flags.append(0)
        if self._drain_next:
            from ksvc_host.abi.layout import SUBMIT_FLAG_DRAIN

            self._flags[-1] |= SUBMIT_FLAG_DRAIN
            self._drain_next = False
        return op

    def barrier(self) -> None:
        """The next operation waits for every earlier one (DRAIN)."""
        self._drain_next = True

    def __len__(self) -> int:
        return len(self._ops)

    def run(self) -> list[Any]:
        """Submit everything queued and wait for all of it."""
        from ksvc_host.abi.layout import SUBMIT_FLAG_LINKED

        flags = list(self._flags)
        if self.linked:
            for i in range(len(flags) - 1):
                flags[i] |= SUBMIT_FLAG_LINKED
        ops, self._ops, self._flags = self._ops, [], []
        return self._k.run_batch(ops, flags)
