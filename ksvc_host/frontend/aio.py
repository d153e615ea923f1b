"""The asyncio front end: ``async with ksvc.open_async() as k: await k.pread(fd, 4096, 0)``.

Completions wake the event loop through the notifier's descriptor
(``loop.add_reader``); a notifier without one (a futex word) gets a small
waiter thread. With the inline driver the loop itself runs the
dispatcher's turns. Cancelling a task cancels the operation in the kernel where
it can (io_uring); its buffers stay referenced until the kernel's
completion arrives either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any

from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.errors import DispatcherFailed
from ksvc_host.frontend.blocking import check_route
from ksvc_host.frontend.core import BULK_MAX, BulkWaiter, Completer, Waiter
from ksvc_host.frontend.operations import SETTLE_S, BulkOp, LateResult, Op, Operations, ReadStream, oserror, unpin
from ksvc_host.frontend.tier0 import SharedPageReads
from ksvc_host.instance import Instance
from ksvc_host.lanes import LoopLane
from ksvc_host.traits import FixedFilesIoBackend, FixedFileTable, MultishotIoBackend

_NR_PREAD64 = SYSCALLS["pread64"]
_NR_PWRITE64 = SYSCALLS["pwrite64"]
_NR_READ = SYSCALLS["read"]
_NR_WRITE = SYSCALLS["write"]
_NR_RECVFROM = SYSCALLS["recvfrom"]
_NR_SENDTO = SYSCALLS["sendto"]

_DRIVE_TURNS = 64
_BACKLOG_RETRY = 0.001


class _Outcome:
    """Where one operation's completion goes: its future (no reference back to the waiter, so no cycle)."""

    __slots__ = ("fut", "late")

    def __init__(self, fut: asyncio.Future[tuple[int, int]]) -> None:
        self.fut: asyncio.Future[tuple[int, int]] | None = fut
        self.late: LateResult | None = None
        """Set when the caller gave up waiting: the result, once it comes, goes here."""

    def __call__(self, corr_id: int, result: int, flags: int) -> None:
        if flags > 0 and flags & L.COMPLETION_FLAG_MORE:
            return
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result((result, flags))
        elif self.late is not None:
            self.late(corr_id, result, flags)


class _ThreadsafeOutcome(_Outcome):
    """An outcome delivered on the dispatcher's thread (``direct-wake`` sink): handed over to the loop."""

    __slots__ = ("loop",)

    def __init__(self, fut: asyncio.Future[tuple[int, int]], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(fut)
        self.loop = loop

    def __call__(self, corr_id: int, result: int, flags: int) -> None:
        self.loop.call_soon_threadsafe(_Outcome.__call__, self, corr_id, result, flags)


class AsyncKsvc(SharedPageReads, Operations):
    """Asyncio helpers over one instance; each returns an awaitable future."""

    def __init__(self, instance: Instance, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.instance = instance
        self.loop = loop or asyncio.get_running_loop()
        self._completer = Completer(instance)
        self._completer.on_reaped = self._flush_backlog
        self._buffers = instance.buffer_provider
        self._page = instance.shared_page
        self._backlog: deque[tuple[Op, Waiter]] = deque()
        self._bulk_backlog: deque[BulkWaiter] = deque()
        self._drive_scheduled = False
        self._backlog_timer: asyncio.TimerHandle | None = None
        self._runs = self._completer.inline
        """This loop runs the inline driver's turns: submissions need no wake-up."""
        self._waiter_thread: threading.Thread | None = None
        self._late: dict[int, bytearray] = {}
        self._threadsafe = self._completer.direct and not self._completer.inline
        """Completions are delivered on the dispatcher's thread (``direct-wake``), not on the loop's."""
        self._closed = False
        backend = instance.io_backend
        self._multishot_accept = isinstance(backend, MultishotIoBackend)
        self._fixed_files: FixedFileTable | None = (
            backend.fixed_files if isinstance(backend, FixedFilesIoBackend) else None
        )
        self._loop_lane = LoopLane(instance, self.loop, settle_s=SETTLE_S)
        self._lane = self._loop_lane.lane
        self._new_future = self._loop_lane.new_future
        """The loop thread's own lane (:mod:`ksvc_host.lanes`), or None: operations it takes skip the dispatcher."""
        inline = self._completer.inline_driver
        if inline is not None:
            self._fd: int | None = inline.fileno()
            self.loop.add_reader(self._fd, self._drive)
        elif self._completer.direct:
            self._fd = None  # results come through call_soon_threadsafe; nothing to watch
        else:
            self._fd = instance.notifier.fileno()
            if self._fd is not None:
                self.loop.add_reader(self._fd, self._on_notified)
            else:
                self._waiter_thread = threading.Thread(target=self._wait_thread, name="ksvc-async-waiter", daemon=True)
                self._waiter_thread.start()

    # Completion side ---------------------------------------------------------------------

    def _on_notified(self) -> None:
        self.instance.notifier.clear()
        self._completer.reap()

    def _wait_thread(self) -> None:
        notifier = self.instance.notifier
        while not self._closed:
            if notifier.wait(None) and not self._closed:
                try:
                    self.loop.call_soon_threadsafe(self._completer.reap)
                except RuntimeError:  # loop closed
                    return

    def _drive(self) -> None:
        self._drive_scheduled = False
        if self._closed:  # aclose() is closing the instance on another thread, which releases the rings
            return
        driver = self._completer.inline_driver
        assert driver is not None
        driver.clear_wakeup()
        for _ in range(_DRIVE_TURNS):  # bounded: let other callbacks run
            try:
                progressed = driver.run_turn()
            except Exception:  # noqa: BLE001 - the driver failed the dispatcher: every pending operation failed
                return
            self._completer.reap()
            if not progressed:
                retry = driver.wait_timeout()
                if retry is not None:  # a tier refused work and nothing will wake us: look again soon
                    self.loop.call_later(retry, self._schedule_drive)
                return
        self._schedule_drive()

    def _kick(self) -> None:
        """After submitting: the inline driver's turns run on this loop (the dispatcher's thread was woken)."""
        if self._completer.inline:
            self._schedule_drive()

    def _schedule_drive(self) -> None:
        if not self._drive_scheduled:
            self._drive_scheduled = True
            self.loop.call_soon(self._drive)

    def _flush_backlog(self) -> None:
        try:
            self._flush_backlog_now()
        finally:
            if (self._backlog or self._bulk_backlog) and self._backlog_timer is None and not self._closed:
                # The ring was full. Room comes back when the dispatcher takes entries, which need not
                # come with a completion (receives that wait for data): look again shortly.
                self._backlog_timer = self.loop.call_later(_BACKLOG_RETRY, self._retry_backlog)

    def _retry_backlog(self) -> None:
        self._backlog_timer = None
        if self._closed:
            return
        self._flush_backlog()
        self._kick()

    def _flush_backlog_now(self) -> None:
        while self._bulk_backlog:
            if not self._completer.bulk_continue(self._bulk_backlog[0]):
                return
            self._bulk_backlog.popleft()
        while self._backlog:
            op, w = self._backlog[0]
            if not self._completer.try_submit(((op.nr, op.args, 0),), (w,)):
                return
            self._backlog.popleft()

    # Submission side ---------------------------------------------------------------------

    def _run(self, op: Op) -> Coroutine[Any, Any, Any]:
        return self._call(op)

    # The loop's lane: the calls programs make in loops, one C call to start, resolved in batches. What
    # such a call returns is the entry's waiter itself, a coroutine that settles its own cancellation (the
    # lane builder's contract): a cancelled task's entry is cancelled in the kernel, and a value that won
    # the race is delivered instead, so nothing read or written goes unseen.

    def pread(self, fd: int, n: int, offset: int) -> Any:
        lane = self._lane
        if lane is not None:
            fut = self._new_future()
            if lane.start_read(fut, _NR_PREAD64, fd, n, offset) is not None:
                if not self._loop_lane.scheduled:  # else the scheduled turn takes it (saves a call per op)
                    self._loop_lane.soon()
                return fut
            if self._rebind():
                return self.pread(fd, n, offset)
        return super().pread(fd, n, offset)

    def read(self, fd: int, n: int) -> Any:
        return self._lane_read(_NR_READ, fd, n, 0)

    def recv(self, fd: int, n: int, flags: int = 0) -> Any:
        return self._lane_read(_NR_RECVFROM, fd, n, flags)

    def _lane_read(self, nr: int, fd: int, n: int, flags: int) -> Any:
        lane = self._lane if not self._late else None  # bytes kept from a cancelled read come first
        if lane is not None:
            fut = self._new_future()
            if lane.start_read(fut, nr, fd, n, flags) is not None:
                if not self._loop_lane.scheduled:
                    self._loop_lane.soon()
                return fut
            if self._rebind():
                return self._lane_read(nr, fd, n, flags)
        return super().read(fd, n) if nr == _NR_READ else super().recv(fd, n, flags)

    def pwrite(self, fd: int, data: Any, offset: int) -> Any:
        return self._lane_write(_NR_PWRITE64, fd, data, offset)

    def write(self, fd: int, data: Any) -> Any:
        return self._lane_write(_NR_WRITE, fd, data, 0)

    def send(self, fd: int, data: Any, flags: int = 0) -> Any:
        return self._lane_write(_NR_SENDTO, fd, data, flags)

    def _lane_write(self, nr: int, fd: int, data: Any, y: int) -> Any:
        lane = self._lane
        if lane is not None:
            fut = self._new_future()
            if lane.start_write(fut, nr, fd, data, y) is not None:
                if not self._loop_lane.scheduled:
                    self._loop_lane.soon()
                return fut
            if self._rebind():
                return self._lane_write(nr, fd, data, y)
        if nr == _NR_PWRITE64:
            return super().pwrite(fd, data, y)
        return super().write(fd, data) if nr == _NR_WRITE else super().send(fd, data, y)

    def _rebind(self) -> bool:
        """A lane refused an entry: if only because the loop runs on another thread now, use a new lane."""
        lane = self._loop_lane.rebind()
        if lane is None:
            return False
        self._lane = lane
        return True

    async def _call(self, op: Op) -> Any:
        """One operation: submit it, await its completion, return its value (a coroutine: no cycle, no task).

        The waiter's callback is an :class:`_Outcome`, which holds the
        future and nothing that leads back to the waiter, so a finished
        operation is freed by reference counting alone.
        """
        try:
            check_route(self.instance, op.nr)
        except OSError:
            op.abandon()  # never submitted
            raise
        lane = self._lane
        if lane is not None:
            lane_fut = self._new_future()
            token = lane.start(lane_fut, op.keep, op.nr, *op.args)
            plan = self._loop_lane.plan
            pre = None
            if token is None and plan is not None and (pre := plan.prebuilt(op.nr, op.args, op.keep)):
                token = lane.start_sqe(lane_fut, pre.keep, pre.sqe)  # the host's SQE, same lane
            if token is not None:
                if not self._loop_lane.scheduled:  # else the scheduled turn takes it (saves a call per op)
                    self._loop_lane.soon()
                try:
                    lane_result = await lane_fut  # cancelled: once the kernel answered (the waiter settles)
                except asyncio.CancelledError:
                    # The settle may have timed out with the entry still in the kernel: the lane keeps the
                    # views in op.keep, so they stay pinned until it lets go of them.
                    op.abandon(kernel_done=False)
                    del op, pre  # the exception's traceback keeps this frame, not the operation's buffers
                    raise
                return op.outcome(lane_result if pre is None else pre.result(lane_result))
            if self._rebind():
                return await self._call(op)
        c = self._completer
        fut: asyncio.Future[tuple[int, int]] = self.loop.create_future()
        out = _ThreadsafeOutcome(fut, self.loop) if self._threadsafe else _Outcome(fut)
        w = Waiter(op.keep, out)
        if self._backlog or not c.try_submit(((op.nr, op.args, 0),), (w,), wake=not self._runs):
            self._backlog.append((op, w))  # ring full: sent when completions free room
            self._flush_backlog()
        self._kick()
        try:
            result, flags = await fut
        except asyncio.CancelledError:
            won = await self._settle(op, w, out)
            if won is None:
                del op, w, out, fut  # the exception's traceback keeps this frame, not the operation's buffers
                raise
            # The operation completed before the kernel could cancel it: its result is delivered
            # instead (as asyncio.wait_for does), so no bytes read, written or accepted go unseen.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            result, flags = won, 0
        if flags == -1 and c.failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {c.failure!r}")
        return op.outcome(result)

    async def _settle(self, op: Op, w: Waiter, out: _Outcome) -> int | None:
        """The awaiting task was cancelled: cancel the operation and wait for the kernel's answer.

        Returns the result when the operation succeeded before the kernel
        could cancel it (the caller delivers it instead of the cancellation),
        else None: the cancellation is reported, and only once the kernel
        is done with the operation. A call stuck on a worker is waited for
        ``SETTLE_S`` at most; its buffers stay referenced until it ends, and
        a read among them keeps its bytes for the next read of that
        descriptor.
        """
        if not w.corr_id:  # still in the backlog: never submitted
            with contextlib.suppress(ValueError):
                self._backlog.remove((op, w))
            op.abandon()
            return None
        if not w.done:
            out.fut = self.loop.create_future()
            self.instance.dispatcher.request_cancel(w.corr_id)
            self._kick()
            deadline = self.loop.time() + SETTLE_S
            while not out.fut.done():
                left = deadline - self.loop.time()
                if left <= 0:
                    out.fut = None
                    out.late = LateResult(self, op)  # handled when the kernel finally answers
                    return None
                with contextlib.suppress(asyncio.CancelledError):  # cancelled again: still waiting for the kernel
                    await asyncio.wait((out.fut,), timeout=left)
            result, flags = out.fut.result()
            if flags == -1:  # failed or closed meanwhile: nothing ran to completion
                result = -errno.ECANCELED
        else:
            result = w.result
        if result >= 0:
            return result
        op.abandon()
        return None

    def _run_bulk(self, op: BulkOp) -> Coroutine[Any, Any, Any]:
        return self._await_bulk(op)

    async def _await_bulk(self, op: BulkOp) -> Any:
        return await self._bulk_future(op)

    def _bulk_future(self, op: BulkOp) -> asyncio.Future[Any]:
        """Submit a bulk operation now; a future of its value."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        try:
            if op.n:
                check_route(self.instance, op.nr)
        except OSError as exc:
            unpin(op.pins)
            fut.set_exception(exc)
            return fut
        if op.n == 0:
            fut.set_result(op.done([]))
            return fut
        parts: list[BulkWaiter] = []
        left = [0]

        def part_done(_: BulkWaiter) -> None:
            left[0] -= 1
            if left[0]:
                return
            unpin(op.pins)  # every entry answered: the kernel is done with the caller's buffer
            if fut.done():  # cancelled: the kernel is done with the memory only now
                parts.clear()
                return
            failed = next((p.failed for p in parts if p.failed), 0)
            values = [r for p in parts for r in p.values()]
            parts.clear()  # each part's callback refers to this list: no cycle outlives the operation
            # An exception for the awaiting task is made or caught here without a traceback through this
            # frame, which refers to the future that holds it (a cycle for the collector otherwise).
            err: BaseException | None = None
            if failed:
                failure = self._completer.failure
                err = oserror(-failed) if failure is None else DispatcherFailed(f"the dispatcher failed: {failure!r}")
            else:
                try:
                    fut.set_result(op.done(values))
                except Exception as exc:  # noqa: BLE001 - becomes the awaiting task's exception
                    err = exc.with_traceback(None)
            if err is not None:
                fut.set_exception(err)

        on_done: Callable[[BulkWaiter], None] = part_done
        if self._completer.direct and not self._completer.inline:
            call = self.loop.call_soon_threadsafe

            def handoff(b: BulkWaiter) -> None:
                call(part_done, b)

            on_done = handoff

        for start in range(0, op.n, BULK_MAX):
            n = min(BULK_MAX, op.n - start)
            offs = op.offsets[start : start + n] if op.offsets is not None else None
            addrs = op.addrs + start if op.addrs is not None else None
            parts.append(self._completer.new_bulk(op.nr, op.fd, op.addr0 + start * op.stride, op.stride, op.length,
                                                  offs, n, op.keep, on_done, addrs))  # fmt: skip
        left[0] = len(parts)
        for b in parts:
            if self._bulk_backlog or not self._completer.bulk_continue(b, wake=not self._runs):
                self._bulk_backlog.append(b)  # ring full: the rest goes as completions free room
                self._flush_backlog()
        self._kick()
        return fut

    async def pread_many(self, fd: int, size: int, offsets: Sequence[int]) -> Any:
        """The bulk read on the loop's lane: one C call starts every read the lane takes, one future gets all
        their results; what it does not take (see :meth:`_lane_stream`) goes through the shared channel."""
        lane = self._lane
        if lane is not None and offsets:
            fut: asyncio.Future[list[Any]] = self._new_future()
            started = lane.start_read_many(fut, _NR_PREAD64, fd, size, offsets)
            if started:
                if not self._loop_lane.scheduled:
                    self._loop_lane.soon()
                got = await fut  # cancelled: the reads finish in the background, their bytes unseen
                if started < len(offsets):
                    try:
                        got = got + await super().pread_many(fd, size, offsets[started:])
                    except OSError:  # raised after the lane's own first failure, as in one bulk
                        if all(value.__class__ is not int for value in got):
                            raise
                for value in got:
                    if value.__class__ is int:
                        raise oserror(-value)  # the first failure; every read has run
                return got
        return await super().pread_many(fd, size, offsets)

    async def preadinto_many(self, fd: int, buffer: Any, size: int, offsets: Sequence[int]) -> Any:
        """Read entry *i* into ``buffer[i*size:(i+1)*size]`` from ``offsets[i]``; a list of byte counts."""
        return await self._lane_rw_many(_NR_PREAD64, fd, buffer, size, offsets)

    async def pwrite_many(self, fd: int, data: Any, size: int, offsets: Sequence[int]) -> Any:
        """Write ``data[i*size:(i+1)*size]`` at ``offsets[i]`` for every *i*; a list of byte counts."""
        return await self._lane_rw_many(_NR_PWRITE64, fd, data, size, offsets)

    async def _lane_rw_many(self, nr: int, fd: int, buffer: Any, size: int, offsets: Sequence[int]) -> list[int]:
        """The bulk into or from one buffer: groups on the loop's lane, one C call to start each and one
        future for its counts, for as long as the lane takes them; the rest (a descriptor or an offset it
        does not take) through the shared channel. The first failure is raised once every entry has run, as
        in one bulk. Cancelled, the started entries finish in the background, the lane holding the buffer."""
        lane, n = self._lane, len(offsets)
        counts: list[int] = []
        while lane is not None and len(counts) < n:
            fut: asyncio.Future[list[int]] = self._new_future()
            started = lane.start_rw_many(fut, nr, fd, buffer, size, offsets, len(counts))
            if not started:
                break
            if not self._loop_lane.scheduled:
                self._loop_lane.soon()
            counts += await fut
        if len(counts) < n or not n:
            try:
                counts += await self._rw_many(nr, fd, buffer, size, offsets, len(counts))
            except OSError:
                if all(c >= 0 for c in counts):
                    raise
        for c in counts:
            if c < 0:
                raise oserror(-c)  # the first failure, after every entry ran (and before any of the rest's)
        return counts

    def pread_iter(self, fd: int, size: int, offsets: Iterable[int], *, depth: int = 64) -> AsyncIterator[bytes]:
        """Read up to *size* bytes at each of *offsets*; ``async for`` yields each result in order.

        The asyncio form of ``Ksvc.pread_iter``: at most *depth* reads in
        flight, the next ones read while these are handed back; the first
        failed read raises its ``OSError`` when reached.
        """
        check_route(self.instance, _NR_PREAD64)
        if self._lane is not None and not self._completer.pipelined:
            return self._lane_stream(ReadStream(fd, size, offsets, depth), depth)
        parts = ReadStream.PIPELINED_PARTS if self._completer.pipelined else 1
        return self._stream(ReadStream(fd, size, offsets, depth, parts))

    async def _lane_stream(self, stream: ReadStream, depth: int) -> AsyncIterator[bytes]:
        """The stream on the loop's lane: two groups of half the window in flight, each one C call to start
        and one future for all its reads, resolved by the lane's turns; while one group is handed back the
        other is read. Offsets the lane does not take (a descriptor it cannot read exactly as os.pread
        would, a negative offset, no free slot) and all after them go through the shared channel, in order."""
        lane = self._lane
        assert lane is not None
        half = max(1, depth // 2)
        groups: deque[asyncio.Future[list[Any]]] = deque()
        rest: ReadStream | None = None
        try:
            while True:
                while rest is None and len(groups) < 2:
                    taken = stream.take(half)
                    if not taken:
                        break
                    fut: asyncio.Future[list[Any]] = self._new_future()
                    started = lane.start_read_many(fut, _NR_PREAD64, stream.fd, stream.size, taken)
                    if started < len(taken):
                        rest = stream.rest(taken[started:])
                    if started:
                        groups.append(fut)
                        self._loop_lane.soon()
                if not groups:
                    break
                values = await groups[0]
                groups.popleft()
                for v in values:
                    if v.__class__ is int:
                        raise oserror(-v)
                    yield v
        finally:
            for fut in groups:  # left early: the reads finish in the background, their bytes unseen
                fut.cancel()
        if rest is not None:
            async for value in self._stream(rest):
                yield value

    async def _stream(self, stream: ReadStream) -> AsyncIterator[bytes]:
        out: deque[asyncio.Future[Any]] = deque()
        try:
            while True:
                while len(out) < stream.parts_in_flight:
                    op = stream.next_op()
                    if op is None:
                        break
                    out.append(self._bulk_future(op))
                if not out:
                    return
                values, err = await out.popleft()
                for v in values:
                    yield v
                if err:
                    raise oserror(err)  # made here: no frame of ours holds it
        finally:
            for fut in out:  # left early: the reads finish in the background and keep their buffers till then
                fut.cancel()

    def submit_callback(self, op: Op, fn: Callable[[int], None], *, multishot: bool = False) -> Waiter:
        """Low level: submit *op* and call ``fn(result)`` on the loop's thread when it completes.

        No future and no task: for transports that keep one operation in
        flight and react to each result (``ksvc_host.net``). *result* is the
        raw syscall result (``-errno`` on failure, ``-EIO`` if the dispatcher
        failed). :meth:`cancel` asks the kernel to stop the operation; *fn*
        still runs once. Exceptions from *fn* go to the loop's exception handler.
        With ``multishot=True`` (an accept, with the ``multishot-accept``
        feature) *fn* runs for every completion; ``w.done`` tells the last.
        """
        check_route(self.instance, op.nr)
        loop = self.loop

        def call(result: int) -> None:
            try:
                fn(result)
            except Exception as exc:  # noqa: BLE001 - never into the reaping machinery
                loop.call_exception_handler({"message": f"ksvc completion callback {fn!r} failed", "exception": exc})

        def on_done(corr_id: int, result: int, flags: int) -> None:
            if flags > 0 and flags & L.COMPLETION_FLAG_MORE and not multishot:
                return
            call(-errno.EIO if flags == -1 and result >= 0 else result)

        if self._completer.direct and not self._completer.inline:

            def handoff(c: int, r: int, f: int) -> None:
                loop.call_soon_threadsafe(on_done, c, r, f)

            w = Waiter(op.keep, handoff)
        else:
            w = Waiter(op.keep, on_done)
        entry = (op.nr, op.args, L.SUBMIT_FLAG_MULTISHOT if multishot else 0)
        if self._backlog or not self._completer.try_submit((entry,), (w,), wake=not self._runs):
            if multishot:
                raise BlockingIOError(errno.EAGAIN, "submit ring full; retry the multishot submission")
            self._backlog.append((op, w))
            self._flush_backlog()
        self._kick()
        return w

    @property
    def loop_lane(self) -> LoopLane:
        """The loop thread's lane (transports receive and send on it; its ``lane`` is None without lanes)."""
        return self._loop_lane

    @property
    def multishot_accept(self) -> bool:
        """True when one accept submission can yield every connection (the ``multishot-accept`` feature)."""
        return self._multishot_accept

    @property
    def fixed_files(self) -> FixedFileTable | None:
        """The io backend's registered-descriptor table (the ``fixed-files`` feature), or None."""
        return self._fixed_files

    def cancel(self, w: Waiter) -> None:
        """Ask the kernel to stop the operation of *w* (from :meth:`submit_callback`); best effort."""
        if w.corr_id and not w.done:
            self._completer.dispatcher.request_cancel(w.corr_id)
            self._kick()

    # Lifetime ----------------------------------------------------------------------------------

    async def aclose(self, timeout: float = 5.0) -> None:
        """Wait for what is in flight, then close the instance."""
        if self._closed:
            return
        deadline = self.loop.time() + timeout
        while (self._completer.pending_count() or self._backlog) and self.loop.time() < deadline:
            await asyncio.sleep(0.001)
        self._lane = None  # from here every operation takes the shared channel, which refuses it once closed
        await self._loop_lane.aclose(deadline)
        self._closed = True
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
        if self._waiter_thread is not None:
            self.instance.notifier.notify()  # let the waiter thread see _closed and leave
            self._waiter_thread.join()
        await self.loop.run_in_executor(None, self.instance.close, timeout)
        self._completer.take_abandoned()
        self._completer.fail_pending(-errno.ECANCELED)
        self.instance.channel.close()

    async def __aenter__(self) -> AsyncKsvc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
