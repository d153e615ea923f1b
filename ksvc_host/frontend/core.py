"""Shared by every front end: writing submit entries and routing completions to waiters.

Submitting takes the submit lock, writes entries, publishes the tail once
and rings the dispatcher. Completions are reaped from the completion ring
by whichever thread needs one: one *leader* waits on the notifier (or
drives an inline dispatcher) and resolves every waiter it reaps for; other
blocked threads wait on a condition until their result arrives or the
leader role is free.
"""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ksvc_host.abi import layout as L
from ksvc_host.errors import ChannelFull, DispatcherFailed
from ksvc_host.instance import Instance

Entry = tuple[int, tuple[int, ...], int]
"""``(syscall_nr, args, flags)``; args are padded to six words."""


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


class Completer:
    """Submits entries for an instance and routes completions to :class:`Waiter` objects."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.dispatcher = instance.dispatcher
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
        self.failure: BaseException | None = None
        self.inline = not self.dispatcher.threaded
        self.dispatcher.on_failure = self._on_dispatcher_failure
        self._pack = L.SUBMIT_ENTRY.pack_into
        self._unpack = L.COMPLETION_ENTRY.unpack_from
        self.on_reaped: Callable[[], None] | None = None
        sink = instance.completion_sink
        attach = getattr(sink, "attach", None)
        self.direct = callable(attach)
        """True when the sink hands each result to its caller (``direct-wake``): no completion ring."""
        if self.direct:
            self._make_event: Callable[[], Any] = getattr(sink, "make_event", threading.Event)
            attach(self.deliver)  # type: ignore[misc]  # callable() checked above

    def new_waiter(self, keep: Any = None, callback: Callable[[int, int, int], None] | None = None) -> Waiter:
        """A waiter for one entry, with its own wake-up object when results are delivered directly."""
        w = Waiter(keep, callback)
        if self.direct and not self.inline and callback is None:
            w.event = self._make_event()
        return w

    def _resolve(self, corr: int, res: int, flags: int) -> Waiter | None:
        """Hand one completion to its waiter (the final one also unregisters it)."""
        w = self._pending.get(corr)
        if w is None:
            return None
        if not flags & L.COMPLETION_FLAG_MORE:
            del self._pending[corr]
            w.result, w.flags, w.done = res, flags, True
        elif w.results is not None:
            w.results.append(res)
        if w.callback is not None:
            w.callback(corr, res, flags)
        return w

    def deliver(self, corr: int, res: int, flags: int) -> None:
        """Direct delivery of one completion (called by a ``direct-wake`` sink, on the dispatcher's thread)."""
        w = self._resolve(corr, res, flags)
        if w is not None and w.event is not None:
            w.event.set()
        if self._blocked:
            with self._cv:
                self._cv.notify_all()

    # Submitting ---------------------------------------------------------------------

    def free_slots(self) -> int:
        """Submit ring entries that can be written now."""
        return self._sring.size - (self._tail - self._sring.head)

    def try_submit(self, entries: Sequence[Entry], waiters: Sequence[Waiter]) -> int:
        """Write as many entries as fit (never splitting a LINKED chain); return how many.

        Each waiter gets its correlation id and is registered before the
        entry becomes visible, so no completion can arrive unclaimed.
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
            for i in range(count):
                nr, args, flags = entries[i]
                corr = next(self._corr)
                w = waiters[i]
                w.corr_id = corr
                pending[corr] = w
                self._pack(buf, ring.slot_offset(tail), corr, nr, flags, *args)
                tail += 1
            self._tail = tail
            ring.publish_tail(tail)
        self.dispatcher.wake()
        return count

    def submit_all(self, entries: Sequence[Entry], waiters: Sequence[Waiter]) -> None:
        """Submit every entry, waiting for ring space as needed (blocking callers)."""
        done = 0
        while done < len(entries):
            n = self.try_submit(entries[done:], waiters[done:])
            done += n
            if done < len(entries) and n == 0:
                if len(entries) - done > self._sring.size and all(
                    e[2] & L.SUBMIT_FLAG_LINKED for e in entries[done : done + self._sring.size]
                ):
                    raise ChannelFull(errno.EAGAIN, f"a LINKED chain longer than the submit ring ({self._sring.size})")
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
                if self.dispatcher.has_overflow:
                    self.dispatcher.wake()
                return 0
            buf = ring.buf
            unpack = self._unpack
            resolve = self._resolve
            for i in range(n):
                corr, res, flags, _ = unpack(buf, ring.slot_offset(head + i))
                resolve(corr, res, flags)
            self._chead = head + n
            ring.publish_head(self._chead)
        if self.dispatcher.has_overflow:
            self.dispatcher.wake()  # room freed for completions the dispatcher holds
        # Under the lock: a follower checks its waiter and sleeps while holding it, so a
        # notify made here cannot fall between its check and its wait.
        with self._cv:
            if self._blocked:
                self._cv.notify_all()
        if self.on_reaped is not None:
            self.on_reaped()
        return n

    def take_abandoned(self) -> None:
        """After the dispatcher stopped: deliver completions it still held (the ring was full)."""
        self.reap()
        for corr, res, flags in self.dispatcher.abandoned():
            w = self._resolve(corr, res, flags)
            if w is not None and w.event is not None:
                w.event.set()

    def pending_count(self) -> int:
        """Submitted entries whose final completion has not been reaped."""
        return len(self._pending)

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
        while not done():
            with self._cv:
                if done():
                    break
                if self._leader:
                    self._blocked += 1
                    try:
                        self._cv.wait()
                    finally:
                        self._blocked -= 1
                    continue
                self._leader = True
            try:
                self._lead_until(done)
            finally:
                with self._cv:
                    self._leader = False
                    self._cv.notify_all()

    def _wait_for_progress(self) -> None:
        with self._cv:
            if self._leader:
                self._blocked += 1
                try:
                    self._cv.wait(0.05)
                finally:
                    self._blocked -= 1
                return
            self._leader = True
        try:
            before = self._sring.head
            self._lead_until(lambda: self._sring.head != before or self.failure is not None)
        finally:
            with self._cv:
                self._leader = False
                self._cv.notify_all()

    def _lead_until(self, done: Callable[[], bool]) -> None:
        disp = self.dispatcher
        while True:
            self.reap()
            if done():
                return
            if self.failure is not None:
                raise DispatcherFailed(f"the dispatcher failed: {self.failure!r}; open a new instance")
            self.instance.check_usable()
            if self.inline:
                if not disp.run_once():
                    self.reap()
                    if done():
                        return
                    disp.wait(disp.wait_timeout())
            else:
                self.notifier.wait(None)

    # Failure ----------------------------------------------------------------------------

    def _on_dispatcher_failure(self, exc: BaseException) -> None:
        self.failure = exc
        self.fail_pending(-errno.EIO)

    def fail_pending(self, result: int) -> None:
        """Complete every waiter still pending with *result* (dispatcher failure, close)."""
        with self._reap_lock:
            waiters = list(self._pending.values())
            self._pending.clear()
        for w in waiters:
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
