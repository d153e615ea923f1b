"""Lanes: each calling thread's own channel and io_uring (docs/design.md §12).

A lane (:class:`~ksvc_host.traits.Lane`, built by the io backend's
:class:`~ksvc_host.traits.OwnRings` capability; ksvc-basic's is C) carries a
call from the caller to the kernel and back in one call: the submit entry,
the turn (route, translate, SQE, ``io_uring_enter``), the completion entry
and the result. It belongs to the thread that built it, and only that
thread submits to its io_uring, so a request can never be ended by another
thread's exit and no caller waits for another's turn.

:class:`ThreadLanes` gives each thread of a blocking front end its lane on
first use; :class:`LoopLane` makes the one lane of an event loop's thread
(asyncio). A lane takes only what it can run exactly as the direct syscall
would, and only the syscalls the router sends to io_uring; for anything else
it returns ``None`` and the caller takes the shared channel and the
dispatcher. The calls a lane has no translation of its own for (``preadv``,
``unlinkat``, ``fallocate``, ...) travel the same path with an SQE built by the
host's translation (:meth:`LanePlan.prebuilt`); only a call io_uring would not
answer as the syscall does (:mod:`ksvc_host.translate`), or one the router
sends elsewhere, takes the shared channel.

Without a backend that offers lanes (or with ``ksvc.open(lanes=False)``),
every call takes the shared channel, with the same results.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ksvc_host import forksafety
from ksvc_host.instance import Instance
from ksvc_host.routing import io_uring_calls
from ksvc_host.traits import Lane, LaneBuilder, OwnRings
from ksvc_host.translate import translate


class Prebuilt(NamedTuple):
    """A call's SQE built by the host, for a lane's ``call_sqe``/``start_sqe``."""

    sqe: bytes
    keep: Any
    """The operation's memory and the translation's, held by the lane until the kernel lets go."""
    finish: Callable[[int], int] | None
    """Maps the CQE's result to the syscall's (may copy data out)."""

    def result(self, res: int) -> int:
        """The syscall's result for the CQE's *res*."""
        return res if self.finish is None else self.finish(res)


class LanePlan(NamedTuple):
    """How this instance's lanes are built, resolved once: the backend's builder and the routes."""

    builder: LaneBuilder
    routes: tuple[int, ...]
    """The syscalls a lane takes: those the builder can carry and the router sends to io_uring."""
    host_translated: frozenset[int]
    """The syscalls the router sends to io_uring that the builder has no translation for: a lane runs them
    with the SQE of :func:`ksvc_host.translate.translate`."""

    def build(self, *, settle_s: float, entries: int = 0, slots: int = 0) -> Lane:
        """A lane owned by the calling thread (``OSError`` when the kernel gives no ring).

        *entries*: SQ entries (the batch one turn can submit); *slots*: entries in flight at once."""
        return self.builder.build(self.routes, entries=entries or _THREAD_ENTRIES, slots=slots or _THREAD_SLOTS,
                                  settle_s=settle_s)

    def prebuilt(self, nr: int, args: tuple[int, ...], keep: Any) -> Prebuilt | None:
        """The SQE of a call no lane translates itself (*keep*: the operation's memory); ``None`` when the
        router sends *nr* elsewhere or io_uring would not answer this call as the syscall does."""
        tr = translate(nr, args) if nr in self.host_translated else None
        return None if tr is None else Prebuilt(tr.sqe.to_bytes(), (keep, tr.keep), tr.finish)


def plan(instance: Instance) -> LanePlan | None:
    """This instance's lane plan, or ``None`` when it cannot have lanes."""
    backend = instance.io_backend
    builder = backend.lane_builder() if isinstance(backend, OwnRings) and instance.lanes else None
    if builder is None:
        return None
    to_uring = io_uring_calls(instance.router)
    return LanePlan(builder, tuple(sorted(builder.calls & to_uring)), frozenset(to_uring - builder.calls))


def _release(guards: dict[int, forksafety.ChildCloses], key: int) -> None:
    guard = guards.pop(key, None)
    if guard is not None:
        guard.release()


class ThreadLanes:
    """The lanes of one blocking front end: one per calling thread, built on first use."""

    def __init__(self, instance: Instance, *, settle_s: float) -> None:
        self._settle_s = settle_s
        self.plan = plan(instance)
        """How the lanes are built and what they take (``None``: no lanes)."""
        self._local = threading.local()
        self._lanes: weakref.WeakSet[Lane] = weakref.WeakSet()
        self._guards: dict[int, forksafety.ChildCloses] = {}
        self._lock = threading.Lock()
        self._closed = self.plan is None
        self._deadline = 0.0
        self.retired: list[Lane] = []
        """Lanes whose kernel still held a call's memory when its caller gave up: kept for good."""
        forksafety.register(self)
        if not self._closed:
            instance.attach(self)

    def mine(self) -> Lane | None:
        """The calling thread's lane (built now if it has none), or ``None`` without lanes."""
        try:
            return self._local.lane
        except AttributeError:
            return self._build()

    def _build(self) -> Lane | None:
        lane = None
        with self._lock:
            if not self._closed and self.plan is not None:
                try:
                    lane = self.plan.build(settle_s=self._settle_s)
                except OSError:
                    lane = None  # no ring for this thread (limits): it uses the shared channel
                if lane is not None:
                    self._lanes.add(lane)
                    self._guards[id(lane)] = forksafety.close_in_child(lane.fileno)
                    weakref.finalize(lane, _release, self._guards, id(lane))
        self._local.lane = lane
        return lane

    def inflight(self) -> int:
        """Calls inside the lanes' kernels now (blocked callers)."""
        return sum(lane.inflight for lane in list(self._lanes))

    def entries(self) -> int:
        """Entries the live lanes ran."""
        return sum(lane.entries for lane in list(self._lanes))

    def interrupted(self, lane: Lane) -> tuple[tuple[int, int, bytes | None] | None, bool]:
        """After an exception left a lane call: its settled ``(fd, result, data)`` (or ``None``), and whether
        the lane died holding memory the kernel may still use (it is kept for good and replaced)."""
        late = lane.take_late()
        dead = bool(lane.dead)
        if dead:
            if lane.inflight:
                self.retired.append(lane)  # the kernel may still write into memory the lane holds
            del self._local.lane
        return late, dead

    def fail(self) -> None:
        """The instance failed: take no new calls, and cancel those waiting now."""
        self.begin_close(time.monotonic())

    def begin_close(self, deadline: float) -> None:
        """No new lanes; calls still waiting at monotonic time *deadline* are cancelled."""
        with self._lock:
            self._closed = True
            lanes = list(self._lanes)
        self._deadline = deadline
        for lane in lanes:
            lane.closing(deadline)

    def finish_close(self) -> None:
        """Release every lane's ring once its call returned (bounded); a lane the kernel holds is kept."""
        lanes = list(self._lanes)
        end = self._deadline + self._settle_s + 0.5
        while lanes:
            lanes = [lane for lane in lanes if not lane.close()]
            if not lanes or time.monotonic() > end:
                break
            time.sleep(0.005)
        self.retired.extend(lanes)  # still inside the kernel: never released under it
        for guard in list(self._guards.values()):
            guard.release()
        forksafety.unregister(self)

    def drop_after_fork(self) -> None:
        """In a forked child: the parent's rings are not ours (their descriptors were closed there)."""
        for lane in list(self._lanes):
            lane.forget()
            guard = self._guards.pop(id(lane), None)
            if guard is not None:
                guard.drop_after_fork()  # now: dropping the lane below would release its guard unrun
        self._closed = True
        self._local = threading.local()


class LoopLane:
    """The lane of an asyncio front end: owned by the event loop's thread, driven by loop callbacks.

    Operations write entries with a future each (``lane.start*``); one turn
    per loop iteration (:meth:`soon`) submits them all, and the lane's
    eventfd, which the kernel signals when it completes something later,
    runs another. A turn resolves every future its reap produced in one C
    call.
    """

    def __init__(self, instance: Instance, loop: asyncio.AbstractEventLoop, *, settle_s: float) -> None:
        self.plan = plan(instance)
        """How the lanes are built and what they take (``None``: no lanes)."""
        self._loop = loop
        self._settle_s = settle_s
        self.scheduled = False
        """A turn is already scheduled: what is started now goes out with it (callers may skip :meth:`soon`)."""
        self.new_future = self.plan.builder.waiter(loop) if self.plan is not None else loop.create_future
        """A new future for an entry of this loop's lane: the builder's waiter, which the turn resolving it
        wakes at the turn's end (no ``call_soon`` handle per operation)."""
        self._efd = -1
        self._guards: list[forksafety.ChildCloses] = []
        self._closed = False
        self.lane: Lane | None = None
        forksafety.register(self)
        self._build()

    def _build(self) -> None:
        if self.plan is None:
            return
        try:
            self.lane = self.plan.build(settle_s=self._settle_s, entries=_LOOP_ENTRIES, slots=_LOOP_SLOTS)
        except OSError:
            self.lane = None  # no ring (limits): every operation takes the shared channel
        if self.lane is None:
            return
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.lane.register_eventfd(self._efd)
        self._guards = [forksafety.close_in_child(self.lane.fileno), forksafety.close_in_child(self._efd)]
        self._loop.add_reader(self._efd, self._completed)

    def _release(self) -> bool:
        """Give up the current lane (False, kept for good, when the kernel still holds its memory)."""
        lane = self.lane
        if lane is None:
            return True
        self.lane = None
        self._loop.remove_reader(self._efd)
        os.close(self._efd)
        for guard in self._guards:
            guard.release()
        self._guards = []
        if not lane.close():
            _RETIRED.append(lane)
            return False
        return True

    def rebind(self) -> Lane | None:
        """The loop now runs on another thread than the lane's: a lane for this thread, when the old one is idle.

        A lane is submitted to only by the thread that built it; a loop run
        by turns on several threads (``run_until_complete`` from a worker)
        gets a new lane on each, as long as nothing is in flight.
        """
        lane = self.lane
        if self._closed or lane is None or lane.mine or lane.inflight or lane.queued:
            return None
        self._release()
        self._build()
        return self.lane

    def soon(self) -> None:
        """Run a turn in this loop iteration's callbacks (once, however many entries were written)."""
        if not self.scheduled:
            self.scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self.scheduled = False
        lane = self.lane
        if lane is not None:
            lane.turn(False)  # submit what was started; what completes later, the eventfd reports
            if lane.queued or lane.unfinished:  # the SQ was full, or the turn's budget spent: the rest next iteration
                self.soon()

    def _completed(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        lane = self.lane
        if lane is not None and lane.turn():
            if lane.queued:  # what the callbacks started (a protocol's sends): submitted now, in one batch
                lane.turn(False)
            # The turn's callbacks also woke tasks (call_soon): a turn queued behind them submits what they
            # start in this same loop iteration, in one batch, instead of one iteration later.
            self.soon()

    async def aclose(self, deadline: float) -> None:
        """Refuse new entries, wait for those in flight until *deadline* (loop time), cancel the rest."""
        lane = self.lane
        self._closed = True
        if lane is None:
            return
        lane.closing(time.monotonic() + max(0.0, deadline - self._loop.time()))
        while lane.inflight and self._loop.time() < deadline:
            await asyncio.sleep(0.001)
        if lane.inflight:
            lane.cancel_all()
            end = self._loop.time() + self._settle_s
            while lane.inflight and self._loop.time() < end:
                lane.turn()
                await asyncio.sleep(0.001)
        self._closed = True
        self._release()  # a lane still held by the kernel stays, and the memory with it
        forksafety.unregister(self)

    def drop_after_fork(self) -> None:
        """In a forked child: the parent's ring is not ours."""
        if self.lane is not None:
            self.lane.forget()
        for guard in self._guards:
            guard.drop_after_fork()
        self._guards = []
        self.lane = None


_THREAD_ENTRIES: Final = 64
"""SQ entries of a thread's lane."""
_THREAD_SLOTS: Final = 256
"""Entries a thread's lane may have in flight at once (one blocking call, or a bulk chunk)."""
_LOOP_ENTRIES: Final = 256
"""SQ entries of an event loop's lane: entries one turn submits at most (the rest go next turn)."""
_LOOP_SLOTS: Final = 4096
"""Entries an event loop's lane may have in flight at once (a connection holds one receive and one send);
beyond that, operations take the shared channel."""
_RETIRED: list[Lane] = []
"""Loop lanes closed while the kernel still held an entry's memory: kept for good."""
