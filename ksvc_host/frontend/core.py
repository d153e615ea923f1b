"""Shared by every front end: writing submit entries and routing completions to waiters.

Submitting takes the submit lock, writes entries, publishes the tail once
and makes sure a turn of the dispatcher will run: with the thread driver
it wakes the dispatcher's thread, which is the only thread that ever runs
turns (so the only one that submits to io_uring); with the inline driver
the waiting caller runs the turns itself. The dispatcher is reached only
through :class:`~ksvc_host.dispatch.port.DispatcherPort`.

Completions are reaped from the completion ring by whichever thread needs
one: one *leader* waits on the notifier (or runs the inline driver's turns)
and resolves every waiter it reaps for; other blocked threads wait on a
condition until their result arrives or the leader role is free. A waiting
call therefore never holds up another: nobody waits for a turn that only a
sleeping caller would run.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ksvc_host import fastpath
from ksvc_host.abi import layout as L
from ksvc_host.dispatch.port import DispatcherPort, InlineDriving
from ksvc_host.errors import ChannelFull, DispatcherFailed, RingCorrupted
from ksvc_host.instance import Instance
from ksvc_host.traits.capabilities import AttachableCompletionSink, PipelinedIoBackend

Entry = tuple[int, tuple[int, ...], int]
"""``(syscall_nr, args, flags)``; args are padded to six words."""


def _field_error(entry: Entry, exc: struct.error) -> Exception:
    """The error ``os.*`` would give for an argument that does not fit its entry field."""
    nr, args, flags = entry
    for value in (nr, flags, *args):
        if not isinstance(value, int):
            return TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    return OverflowError(f"an argument of syscall {nr} does not fit its 64-bit field ({exc})")


STILL_IN_KERNEL: list[Any] = []
"""Memory of calls that a closed instance completed with ECANCELED while a syscall still used it (kept for good)."""


class Waiter:
    """One submitted entry's result, delivered by :meth:`Completer.reap`.

    ``callback`` (if set) runs in the reaping thread with
    ``(corr_id, result, flags)`` for every completion, MORE-flagged ones too.
    """

    __slots__ = ("corr_id", "result", "flags", "done", "keep", "callback", "results", "event")

    def __init__(self, keep: Any = None, callback: Callable[[int, int, int], None] | None = None) -> None:
        self.corr_id = 0
        self.result = 0
        self.flags = 0
        self.done = False
        self.keep = keep
        """References that must outlive the kernel's use of the memory (buffers)."""
        self.callback = callback
        self.results: list[int] | None = None
        self.event: Any = None
        """The caller's own wake-up, when the completion sink delivers directly."""


BULK_BIT = 1 << 61
"""Correlation ids of bulk entries carry this bit; below it, the group and the index in the group."""
BULK_INDEX_BITS = 20
BULK_MAX = 1 << BULK_INDEX_BITS
"""Entries in one bulk operation at most (front ends split longer ones)."""
_REAP_OTHER = 256
_SPANS_KEPT = 64
_NULL = fastpath.ffi.NULL
_REAP_DONE = 64
_LEADER_RECHECK_S = 0.05
"""How often a sleeping waiter looks again by itself: for a failure no notification announced, or its deadline."""


class BulkWaiter:
    """One bulk operation: *n* entries of one syscall, one result array, one wake-up.

    ``results`` (an ``int64_t[n]``) holds each entry's result once ``done``.
    ``callback(bulk)`` (if set) runs in the reaping thread when it is done.
    """

    __slots__ = ("nr", "fd", "addr0", "stride", "length", "offsets", "n", "submitted", "group", "results",
                 "done", "failed", "keep", "callback", "event", "addrs")  # fmt: skip

    def __init__(
        self, nr: int, fd: int, addr0: int, stride: int, length: int, offsets: Any, n: int, keep: Any,
        callback: Callable[[BulkWaiter], None] | None, results: Any = None,
    ) -> None:
        self.nr, self.fd, self.addr0, self.stride, self.length = nr, fd, addr0, stride, length
        self.offsets = offsets
        self.n = n
        self.submitted = 0
        self.group = -1
        self.results: Any = fastpath.ffi.new("int64_t[]", max(1, n)) if results is None else results
        self.done = n == 0
        self.failed = 0
        """A negative errno when the whole operation failed (dispatcher failure, close)."""
        self.keep = keep
        self.callback = callback
        self.event: Any = None
        self.addrs: Any = fastpath.ffi.NULL
        """A ``uint64_t`` array: entry *i*'s buffer address, instead of ``addr0 + i*stride``."""

    def values(self) -> list[int]:
        """Every entry's result, in submission order."""
        return fastpath.ffi.unpack(self.results, self.n) if self.n else []  # a new list of ints


class Completer:
    """Submits entries for an instance and routes completions to :class:`Waiter` objects."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.dispatcher: DispatcherPort = instance.dispatcher
        self.notifier = instance.notifier
        self._sring = instance.channel.submit_ring
        self._cring = instance.channel.completion_ring
        self._tail = self._sring.tail
        self._chead = self._cring.head
        self._corr = itertools.count(1)
        self._pending: dict[int, Waiter] = {}
        self._submit_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._leader = False
        self._blocked = 0
        self._progress_wanted = False
        """A leader waits on the notifier for the dispatcher to take entries; with a sink that delivers
        directly the dispatcher notifies nobody, so the next delivery does (once)."""
        self.failure: BaseException | None = None
        self.inline_driver: InlineDriving | None = self.dispatcher.inline_driver
        """How callers run the turns (the inline driver), or None: the dispatcher's thread runs them."""
        self.inline = self.inline_driver is not None
        """Callers run the turns (the inline driver): a submitting caller that waits next needs no wake-up."""
        backend = instance.io_backend
        self.pipelined = isinstance(backend, PipelinedIoBackend) and bool(backend.completes_asynchronously)
        """True when the kernel works on submissions on a thread of its own (SQPOLL): streams keep it fed."""
        self.dispatcher.listen(self)
        self._pack = L.SUBMIT_ENTRY.pack_into
        self.on_reaped: Callable[[], None] | None = None
        self.on_failed: Callable[[], None] | None = None
        """Called once the dispatcher failed (the front end stops its thread lanes)."""
        sink = instance.completion_sink
        self.direct = isinstance(sink, AttachableCompletionSink)
        """True when the sink hands each result to its caller (``direct-wake``): no completion ring."""
        self._make_event: Callable[[], Any] = threading.Event
        if isinstance(sink, AttachableCompletionSink):
            self._make_event = sink.make_event
            sink.attach(self.deliver)
        # Bulk operations: results land in per-group arrays, written by the fast path's reap.
        ffi = fastpath.ffi
        self._lib = fastpath.lib
        self._table = ffi.new("struct ksvc_bulk *")
        self._table.bit = BULK_BIT
        self._table.index_bits = BULK_INDEX_BITS
        self._bulks: dict[int, BulkWaiter] = {}
        self._seen: dict[int, Any] = {}
        """Completion bitmaps of the armed groups (``ksvc_bulk_reap`` writes them)."""
        self._free_groups = list(range(fastpath.BULK_GROUPS - 1, -1, -1))
        self._sring_ptr = ffi.cast("uint8_t *", self._sring.address)
        self._cring_ptr = ffi.cast("uint8_t *", self._cring.address)
        self._other = ffi.new("uint64_t[]", 3 * _REAP_OTHER)
        self._done = ffi.new("uint32_t[]", _REAP_DONE)
        self._counts = ffi.new("uint32_t[3]")

    def new_waiter(self, keep: Any = None, callback: Callable[[int, int, int], None] | None = None) -> Waiter:
        """A waiter for one entry, with its own wake-up object when results are delivered directly."""
        w = Waiter(keep, callback)
        if self.direct and not self.inline and callback is None:
            w.event = self._make_event()
        return w

    def _resolve(self, corr: int, res: int, flags: int) -> Any:
        """Hand one completion to its waiter (the final one also unregisters it)."""
        if corr & BULK_BIT:
            return self._resolve_bulk_entry(corr, res)
        w = self._pending.get(corr)
        if w is None:
            return None
        if not flags & L.COMPLETION_FLAG_MORE:
            del self._pending[corr]
            if self.dispatcher.kept_by_kernel(corr):
                STILL_IN_KERNEL.append(w.keep)  # the syscall may still write there: never freed
            w.result, w.flags, w.done = res, flags, True
        elif w.results is not None:
            w.results.append(res)
        if w.callback is not None:
            w.callback(corr, res, flags)
        return w

    def _resolve_bulk_entry(self, corr: int, res: int) -> BulkWaiter | None:
        """One bulk entry's completion, outside the fast path (direct delivery, abandoned ones)."""
        try:
            g = fastpath.complete_entry(self._table, corr, res)
        except RingCorrupted:
            return None  # not from shared memory: a late completion of a bulk already failed as a whole
        if g < 0:
            return self._bulks.get((corr & ~BULK_BIT) >> BULK_INDEX_BITS)
        b = self._bulks[g]
        self._finish_bulk(g)
        return b

    def _finish_bulk(self, g: int) -> None:
        b = self._bulks.pop(g)
        fastpath.disarm_group(self._table, g)
        self._seen.pop(g, None)
        self._free_groups.append(g)
        b.done = True
        if b.event is not None:
            b.event.set()
        if b.callback is not None:
            b.callback(b)

    def deliver(self, corr: int, res: int, flags: int) -> None:
        """Direct delivery of one completion (called by a ``direct-wake`` sink, on the dispatcher's thread)."""
        w = self._resolve(corr, res, flags)
        if w is not None and w.event is not None and w.done:  # a bulk's waiter: only once all of it is in
            w.event.set()
        if self._progress_wanted:
            self._progress_wanted = False
            self.notifier.notify()
        if self._blocked:
            with self._cv:
                self._cv.notify_all()

    # Submitting ---------------------------------------------------------------------

    def free_slots(self) -> int:
        """Submit ring entries that can be written now."""
        return self._sring.size - (self._tail - self._sring.head)

    def try_submit(self, entries: Sequence[Entry], waiters: Sequence[Waiter], *, wake: bool = True) -> int:
        """Write as many entries as fit (never splitting a LINKED chain); return how many.

        Each waiter gets its correlation id and is registered before the
        entry becomes visible, so no completion can arrive unclaimed.
        ``wake=False`` leaves the dispatcher's thread asleep: for a caller
        that waits next, and so runs the loop itself (:meth:`wait_until`).
        """
        self.instance.check_usable()
        if self.failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {self.failure!r}; open a new instance")
        ring = self._sring
        with self._submit_lock:
            room = ring.size - ring.check(ring.head, self._tail)  # a corrupted head raises RingCorrupted
            count = min(room, len(entries))
            if count < len(entries):  # keep chains whole: cut after a non-LINKED entry
                while count and entries[count - 1][2] & L.SUBMIT_FLAG_LINKED:
                    count -= 1
            if not count:
                return 0
            tail = self._tail
            buf = ring.buf
            pending = self._pending
            i = 0
            try:
                for i in range(count):
                    nr, args, flags = entries[i]
                    corr = next(self._corr)
                    self._pack(buf, ring.slot_offset(tail), corr, nr, flags, *args)
                    w = waiters[i]
                    w.corr_id = corr
                    pending[corr] = w
                    tail += 1
            except struct.error as exc:
                # A value that does not fit its field: nothing becomes visible, nothing stays registered.
                for j in range(i):
                    pending.pop(waiters[j].corr_id, None)
                    waiters[j].corr_id = 0
                raise _field_error(entries[i], exc) from None
            self._tail = tail
            ring.publish_tail(tail)
        if wake or not self.inline:
            self.dispatcher.wake()
        return count

    def submit_all(self, entries: Sequence[Entry], waiters: Sequence[Waiter]) -> None:
        """Submit every entry, waiting for ring space as needed (blocking callers, who wait next)."""
        done = 0
        while done < len(entries):
            n = self.try_submit(entries[done:], waiters[done:], wake=False)
            done += n
            if done < len(entries) and n == 0:
                if len(entries) - done > self._sring.size and all(
                    e[2] & L.SUBMIT_FLAG_LINKED for e in entries[done : done + self._sring.size]
                ):
                    raise ChannelFull(errno.EAGAIN, f"a LINKED chain longer than the submit ring ({self._sring.size})")
                self._wait_for_progress(len(entries) - done)

    def new_bulk(
        self, nr: int, fd: int, addr0: int, stride: int, length: int, offsets: Sequence[int] | None, n: int,
        keep: Any = None, callback: Callable[[BulkWaiter], None] | None = None, addrs: Any = None,
        tables: tuple[Any, Any] | None = None,
    ) -> BulkWaiter:
        """A bulk operation: entry *i* is ``nr(fd, addr0 + i*stride, length, offsets[i])``.

        With *addrs* (a ``uint64_t`` array of *n*), entry *i*'s buffer is ``addrs[i]``.
        With *tables*, ``(offsets, results)`` arrays of at least *n* that the
        caller filled (offsets) and reuses once the bulk is finished.

        Nothing is submitted yet: :meth:`bulk_continue` writes what fits.
        """
        if not 0 <= n <= BULK_MAX:
            raise ValueError(f"a bulk operation holds 1 to {BULK_MAX} entries, got {n}")
        offs: Any = fastpath.ffi.NULL
        if tables is not None:
            offs = tables[0]
        elif offsets is not None:
            try:
                offs = fastpath.ffi.new("uint64_t[]", offsets)
            except OverflowError:  # negative offsets travel as the kernel sees them (it answers EINVAL)
                offs = fastpath.ffi.new("uint64_t[]", [o & 0xFFFF_FFFF_FFFF_FFFF for o in offsets])
        b = BulkWaiter(nr, fd & 0xFFFF_FFFF_FFFF_FFFF, addr0, stride, length, offs, n, keep, callback,
                       None if tables is None else tables[1])  # fmt: skip
        if addrs is not None:
            b.addrs = addrs  # a uint64_t array of n addresses (bytes objects that reads fill in place)
        if self.direct and not self.inline and callback is None:
            b.event = self._make_event()
        return b

    def bulk_continue(self, b: BulkWaiter, *, wake: bool = True) -> bool:
        """Submit as much of *b* as the ring has room for; True once all of it is submitted."""
        if b.submitted >= b.n:
            return True
        self.instance.check_usable()
        if self.failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {self.failure!r}; open a new instance")
        ring = self._sring
        with self._submit_lock:
            if b.group < 0:
                with self._reap_lock:
                    if not self._free_groups:
                        return False  # every group in flight: wait for one to finish
                    g = b.group = self._free_groups.pop()
                    self._seen[g] = fastpath.arm_group(self._table, g, b.results, b.n)
                    self._bulks[g] = b
            room = ring.size - ring.check(ring.head, self._tail)
            count = min(room, b.n - b.submitted)
            if count <= 0:
                return False
            first = b.submitted
            offs, addrs = b.offsets, b.addrs
            if first:  # the rest of a bulk the ring had no room for at first
                offs = offs + first if offs != _NULL else _NULL
                addrs = addrs + first if addrs != _NULL else _NULL
            self._lib.ksvc_submit_strided(
                self._sring_ptr, self._tail, ring.mask, BULK_BIT | (b.group << BULK_INDEX_BITS) | first,
                b.nr, b.fd, b.addr0 + first * b.stride, b.stride, b.length, offs, addrs, count,
            )
            self._tail += count
            b.submitted += count
        if wake or not self.inline:
            self.dispatcher.wake()
        return b.submitted >= b.n

    def bulk_results(self, b: BulkWaiter) -> list[int]:
        """The results of a finished bulk; raise when it failed as a whole (dispatcher failure, close)."""
        if b.failed:
            if self.failure is not None:
                raise DispatcherFailed(f"the dispatcher failed: {self.failure!r}; open a new instance")
            raise OSError(-b.failed, os.strerror(-b.failed))
        return b.values()

    def submit_bulk(self, b: BulkWaiter) -> None:
        """Submit all of *b*, waiting for ring space (and a free group) as needed."""
        while not self.bulk_continue(b, wake=False):
            if b.group < 0:  # every bulk group in flight: wait for completions
                self.wait_until(lambda: bool(self._free_groups) or self.failure is not None)
            else:
                self._wait_for_progress()

    def submit_raw(self, entries: Sequence[Entry], waiters: Sequence[Waiter]) -> None:
        """All or nothing, never waiting: raise :class:`ChannelFull` (EAGAIN) when they do not fit."""
        self.instance.check_usable()
        with self._submit_lock:
            if self.free_slots() < len(entries):
                raise ChannelFull(
                    errno.EAGAIN,
                    f"submit ring full ({self.free_slots()} free, {len(entries)} needed); reap and retry",
                )
        if self.try_submit(entries, waiters) != len(entries):
            raise ChannelFull(errno.EAGAIN, "submit ring filled concurrently; reap and retry")

    # Reaping ----------------------------------------------------------------------

    def reap(self) -> int:
        """Drain the completion ring, resolving waiters; return how many entries were read."""
        if self.instance.channel.closed:
            return 0
        with self._reap_lock:
            ring = self._cring
            head = self._chead
            tail = ring.tail
            n = ring.check(head, tail)
            if not n:
                self.dispatcher.room_freed()
                return 0
            consumed = 0
            bad = 0
            other, done, counts = self._other, self._done, self._counts
            resolve = self._resolve
            while consumed < n:
                r = self._lib.ksvc_bulk_reap(
                    self._cring_ptr, head + consumed, tail, ring.mask, self._table,
                    other, _REAP_OTHER, done, _REAP_DONE, counts,
                )
                consumed += counts[0]
                if r < 0:  # -EUCLEAN: the last entry counted was invalid; skipped, nothing written
                    bad += 1
                for i in range(counts[1]):
                    res = other[3 * i + 1]
                    resolve(other[3 * i], res - (1 << 64) if res >> 63 else res, other[3 * i + 2])
                for i in range(counts[2]):
                    self._finish_bulk(done[i])
            self._chead = head + n
            ring.publish_head(self._chead)
        self.dispatcher.room_freed()  # for completions the dispatcher holds, if any
        # A follower counts itself in _blocked before it checks its waiter, and sleeps holding
        # the lock: so either it sees what was just reaped, or we see it and notify here.
        if self._blocked:
            with self._cv:
                self._cv.notify_all()
        if self.on_reaped is not None:
            self.on_reaped()
        if bad and self.failure is None:  # after a failure: late completions of bulks failed as a whole
            raise RingCorrupted(
                f"{bad} completion entr{'y' if bad == 1 else 'ies'} named no live bulk entry (an unknown group, "
                "an index past its end, or a second completion): skipped; everything else was delivered"
            )
        return n

    def take_abandoned(self) -> None:
        """After the dispatcher stopped: deliver completions it still held (the ring was full)."""
        self.reap()
        for corr, res, flags in self.dispatcher.abandoned():
            w = self._resolve(corr, res, flags)
            if w is not None and w.event is not None:
                w.event.set()

    def pending_count(self) -> int:
        """Submitted entries whose final completion has not been reaped (a bulk counts once)."""
        return len(self._pending) + len(self._bulks)

    # Waiting (blocking callers) -------------------------------------------------------

    def wait(self, waiter: Waiter) -> None:
        """Block until *waiter* is done."""
        if waiter.event is not None:
            while not waiter.done:
                waiter.event.wait()
                self._check_alive()
            return
        self.wait_until(lambda: waiter.done)

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise DispatcherFailed(f"the dispatcher failed: {self.failure!r}; open a new instance")

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Block until *done()* holds, reaping (as leader) or waiting for the leader."""
        if self.direct and not self.inline:
            # Results arrive by deliver(); count ourselves blocked *before* checking, so a
            # delivery either sees us and notifies, or happened before our check.
            with self._cv:
                self._blocked += 1
                try:
                    while not done():
                        self._check_alive()
                        self.instance.check_usable()
                        self._cv.wait()
                finally:
                    self._blocked -= 1
            return
        # (No check that the instance is open: a call already submitted gets its completion, from
        # the kernel or from close(), which completes what is left with ECANCELED.)
        if not self._leader and not done():
            self.reap()  # often all it takes (a stream's part, finished while the caller worked)
        while not done():
            if not self._follow_or_lead(done):
                continue
            try:
                self._lead_until(done)
            finally:
                self._resign()

    def _follow_or_lead(self, done: Callable[[], bool]) -> bool:
        """Take the leader role (True), or wait once for the leader's reap (False)."""
        with self._cv:
            if not self._leader:
                if done():
                    return False
                self._leader = True
                return True
            # Counted before the check: a reap that finishes our entries after the check
            # sees us and notifies (reap reads _blocked without taking the lock).
            self._blocked += 1
            try:
                if not done():
                    self._check_alive()
                    if self.inline:
                        # The leader may sleep in the inline driver's wait: our entries need a turn.
                        self.dispatcher.wake()
                    self._cv.wait(_LEADER_RECHECK_S)  # bounded: done() may also be a deadline
            finally:
                self._blocked -= 1
            return False

    def _resign(self) -> None:
        with self._cv:
            self._leader = False
            self._cv.notify_all()

    def _wait_for_progress(self, want: int = 1) -> None:
        """Wait until the dispatcher takes entries, or *want* slots are free (it may have taken them already)."""
        want = min(want, self._sring.size)
        before = self._sring.head

        def progressed() -> bool:
            return self._sring.head != before or self.free_slots() >= want or self.failure is not None

        self.dispatcher.wake()
        with self._cv:
            if self._leader:
                self._blocked += 1
                try:
                    self._cv.wait(_LEADER_RECHECK_S)  # the leader reaps, not necessarily for us: look again
                finally:
                    self._blocked -= 1
                return
            self._leader = True
        try:
            self._lead_until(progressed)
        finally:
            self._resign()

    def _lead_until(self, done: Callable[[], bool]) -> None:
        while True:
            self.reap()
            if done():
                return
            self._check_alive()
            if self.inline:
                if self.instance.closed:  # close() runs the last turns and completes what is left
                    with self._cv:
                        self._cv.wait(_LEADER_RECHECK_S)
                    continue
                self._inline_turn(self.inline_driver, done)
            else:
                # The dispatcher's thread runs every turn; it notifies once per batch it publishes (with a
                # sink that delivers directly, the next delivery notifies). The bounded wait only matters
                # when a broken notifier cannot tell us the dispatcher failed.
                if self.direct:
                    self._progress_wanted = True
                    if done():  # progress before the flag was up notifies nobody: look once more
                        return
                self.notifier.wait(_LEADER_RECHECK_S)

    def _inline_turn(self, driver: InlineDriving | None, done: Callable[[], bool]) -> None:
        """One turn of the inline driver on this thread, then its wait when nothing moved.

        A component that fails here fails the dispatcher, exactly as on the
        dispatcher's thread: every pending caller gets DispatcherFailed.
        """
        assert driver is not None
        try:
            moved = driver.run_turn()
        except Exception:  # the driver failed the dispatcher: every pending caller gets DispatcherFailed
            self._check_alive()
            raise
        if not moved:
            self.reap()
            if not done():
                timeout = driver.wait_timeout()
                driver.wait(_LEADER_RECHECK_S if timeout is None else min(timeout, _LEADER_RECHECK_S))

    # Failure ----------------------------------------------------------------------------

    def dispatcher_failed(self, exc: BaseException) -> None:
        """The dispatcher failed (a :class:`~ksvc_host.dispatch.port.DispatcherListener`): fail every waiter."""
        self.failure = exc
        if self.on_failed is not None:
            self.on_failed()
        self.fail_pending(-errno.EIO)

    def fail_pending(self, result: int) -> None:
        """Complete every waiter still pending with *result* (dispatcher failure, close)."""
        with self._reap_lock:
            waiters = list(self._pending.values())
            self._pending.clear()
            bulks = list(self._bulks.items())
        for g, b in bulks:
            b.failed = result
            self._table.left[g] = 0
            self._finish_bulk(g)
        for w in waiters:
            if self.dispatcher.kept_by_kernel(w.corr_id):
                STILL_IN_KERNEL.append(w.keep)
            w.result, w.flags, w.done = result, -1, True
            if w.event is not None:
                w.event.set()
            if w.callback is not None:
                try:
                    w.callback(w.corr_id, result, 0)
                except Exception:
                    pass
        with self._cv:
            self._cv.notify_all()
        try:
            self.notifier.notify()
        except Exception:
            pass
