"""BasicIoUring: the default IoBackend; io_uring_enter once per batch, no fixed files or buffers."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

from ksvc_basic import express
from ksvc_basic.express import ExpressLane, ExpressRing
from ksvc_basic.own_rings import UringLanes
from ksvc_basic.uring import IoUring
from ksvc_host.abi import io_uring as U
from ksvc_host.traits.capabilities import ExpressChannel, ExpressCompletionSink, ExpressRewrites
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec

_CQE_MORE = int(U.CqeFlag.MORE)  # plain int on the per-completion path
DEFAULT_CQ_ENTRIES = 32768
"""CQ slots by default: operations that may be in flight at once, less the SQ size."""
INTERNAL = 1 << 63
"""user_data bit reserved for the backend's own requests (cancels); never handed back."""


class BasicIoUring:
    """An :class:`~ksvc_host.traits.IoBackend` over one :class:`IoUring`."""

    name = "basic"

    def __init__(self, entries: int = 256, *, setup_flags: int = 0, **ring_kwargs: Any) -> None:
        # Every operation in flight needs a CQ slot of its own (the guard in submit()); idle connections
        # each keep a receive in flight, so the CQ is sized for many thousands of them (16 B per slot).
        cq_entries = ring_kwargs.pop("cq_entries", max(entries * 4, DEFAULT_CQ_ENTRIES))
        try:
            # SUBMIT_ALL: an SQE that fails preparation gets its error CQE and the rest are still
            # submitted; without it io_uring_enter stops there and leaves the others queued.
            self.ring = IoUring(
                entries, flags=setup_flags | U.SetupFlag.SUBMIT_ALL, cq_entries=cq_entries, **ring_kwargs
            )
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.ring = IoUring(entries, flags=setup_flags, cq_entries=cq_entries, **ring_kwargs)  # before 5.18
        self.capacity = self.ring.sq_entries
        self._inflight = 0
        self._internal = 0
        self._opcodes: frozenset[int] | None = None
        self._preparers: list[Callable[[int, SqeSpec], SqeSpec]] = []
        self._rewrites: list[ExpressRewrites | None] = []
        """What each preparer declared it rewrites (``None``: anything), for :meth:`express_ring`."""
        self._filters: list[Callable[[IoCompletion], IoCompletion | None]] = []
        self._opaque_filters = 0
        """Filters that may change completions of any request (not only of their own)."""
        self.assist: IoUring | None = None
        """A second ring without SQPOLL, beside an SQPOLL ring (:meth:`add_assist_ring`)."""
        self.assist_backlog = 0

    def add_assist_ring(self, backlog: int = 0) -> None:
        """Beside the SQPOLL ring, a plain ring whose submissions run on the submitting thread.

        The express lane sends positioned reads and writes there when the
        SQ thread's ring is full and, with *backlog* > 0, whenever the SQ
        thread has that many SQEs unconsumed; the submitting thread runs them
        in its own io_uring_enter.
        Profiled: a stream of page-cached reads through the SQ thread alone
        was bound by that thread (0.79 us per read in C, slower than a plain
        ``pread``); both cores reading gave 2x in C.
        """
        # The CQ as large as the main ring's: the backend's in-flight guard then covers both.
        self.assist = IoUring(self.ring.sq_entries, flags=U.SetupFlag.SUBMIT_ALL, cq_entries=self.ring.cq_entries)
        self.assist_backlog = backlog

    def _rings(self) -> tuple[IoUring, ...]:
        return (self.ring,) if self.assist is None else (self.ring, self.assist)

    def add_completion_filter(
        self, fn: Callable[[IoCompletion], IoCompletion | None], *, own_requests_only: bool = False
    ) -> None:
        """Have *fn* see every CQE first: return it (possibly changed), or ``None`` to swallow it.

        *own_requests_only*: *fn* changes only CQEs of requests its owner
        rewrote, so other completions may bypass it (the express lane).
        """
        self._filters.append(fn)
        if not own_requests_only:
            self._opaque_filters += 1

    def add_preparer(
        self, prepare: Callable[[int, SqeSpec], SqeSpec], rewrites: ExpressRewrites | None = None
    ) -> None:
        """Have *prepare* rewrite every SQE before it is queued (features and buffer providers use this).

        *rewrites* declares which SQEs it changes; without it the express
        lane is off (:meth:`express_ring`).
        """
        self._preparers.append(prepare)
        self._rewrites.append(rewrites)

    def submit(self, user_data: int, sqe: SqeSpec) -> bool:
        """Queue one SQE; ``False`` when the SQ is full."""
        for prepare in self._preparers:
            sqe = prepare(user_data, sqe)
        if self._inflight >= self.ring.cq_entries - self.capacity:
            return False  # keep completions from overflowing the CQ: back-pressure instead
        if not self.ring.prep(user_data, sqe):
            return False
        self._inflight += 1
        return True

    def flush(self) -> int:
        """io_uring_enter for everything queued (none with SQPOLL while the poller is awake)."""
        if self.assist is not None and self.assist.pending_submit():
            self.assist.submit()  # cancels queued for the assist ring
        done = self.ring.submit()
        while self.ring.pending_submit():  # the kernel took only part (EAGAIN/EBUSY): try again
            n = self.ring.submit()
            if not n:
                break
            done += n
        return done

    def poll_completions(self, max_count: int = 64) -> list[IoCompletion]:
        """Reap CQEs, dropping those of internal requests."""
        out = []
        cqes = self.ring.reap(max_count)
        if self.assist is not None:
            cqes += self.assist.reap(max_count)
        for c in cqes:
            if c.user_data & INTERNAL:
                self._internal -= 1
                continue
            if not c.flags & _CQE_MORE:
                self._inflight -= 1
            for fn in self._filters:
                c = fn(c)  # type: ignore[assignment]
                if c is None:
                    break
            if c is not None:
                out.append(c)
        return out

    def express_lane(
        self, rings: ExpressChannel, sink: ExpressCompletionSink, routes: frozenset[int]
    ) -> ExpressLane | None:
        """The dispatcher's express lane on this ring (:class:`~ksvc_host.traits.ExpressIoBackend`), or ``None``."""
        ring = self.express_ring()
        if ring is None:
            return None
        return express.build(rings, sink, ring, routes, self.probe_opcodes(), self.express_room, self.express_account)

    def express_ring(self) -> ExpressRing | None:
        """The raw ring for the dispatcher's express lane, or ``None`` when SQEs need rewriting.

        Rewriting that only touches one address range (registered buffers)
        is allowed: the lane leaves SQEs in that range to :meth:`submit`. So is
        a preparer added with the opcodes it rewrites: the lane leaves those
        opcodes alone (:class:`~ksvc_host.traits.ExpressRewrites`). A filter
        added with ``own_requests_only`` only touches CQEs of its own requests.
        """
        lo = hi = 0
        rewritten: set[int] = set()
        for declared in self._rewrites:
            if declared is None:
                return None
            rewritten |= {int(op) for op in declared.opcodes}  # the lane leaves these opcodes to submit()
            if declared.address_range is not None:
                if hi:
                    return None
                lo, hi = declared.address_range
        if self._opaque_filters:
            return None
        assist = None
        if self.assist is not None:
            assist = _express_ring(self.assist, 0, 0, frozenset())
        return _express_ring(self.ring, lo, hi, frozenset(rewritten), assist, self.assist_backlog)

    def express_room(self) -> int:
        """Operations the express lane may add now: the same CQ-overflow guard as :meth:`submit`.

        The lane checks free SQ slots itself (in the same pass that fills them).
        """
        ring = self.ring
        if ring._to_submit:
            self.flush()  # the lane writes after the published tail: nothing of ours may sit unpublished
        return max(0, ring.cq_entries - self.capacity - self._inflight)

    def express_account(self, submitted: int, completed: int, unsubmitted: int) -> None:
        """The express lane published *submitted* SQEs and reaped *completed* CQEs itself."""
        if submitted:
            self.ring.adopt_external(unsubmitted)
        self._inflight += submitted - completed

    @property
    def completes_asynchronously(self) -> bool:
        """True with SQPOLL: a kernel thread submits, so completions arrive after the submit returns."""
        return bool(self.ring._sqpoll)

    def set_completion_wakeups(self, enabled: bool) -> None:
        """While off, new CQEs do not write the wake-up eventfd: the caller reaps them itself."""
        for ring in self._rings():
            ring.set_eventfd_enabled(enabled)

    def completions_ready(self) -> int:
        """CQEs posted and not yet reaped."""
        if self.assist is None:
            return self.ring.cq_ready()
        return self.ring.cq_ready() + self.assist.cq_ready()

    def _cancel(self, user_data: int, spec: SqeSpec) -> bool:
        ok = False
        for ring in self._rings():  # an express entry may be in either ring
            if ring.prep(user_data, spec):
                self._internal += 1
                ok = True
        return ok

    def cancel_all(self) -> bool:
        """Queue one ASYNC_CANCEL for everything in flight (sent with the next flush)."""
        spec = SqeSpec(U.IoringOp.ASYNC_CANCEL, -1, op_flags=U.IORING_ASYNC_CANCEL_ANY | U.IORING_ASYNC_CANCEL_ALL)
        return self._cancel(INTERNAL, spec)

    def cancel(self, user_data: int) -> bool:
        """Queue an ASYNC_CANCEL for *user_data* (sent with the next flush)."""
        return self._cancel(INTERNAL | user_data, SqeSpec(U.IoringOp.ASYNC_CANCEL, -1, addr=user_data))

    def inflight(self) -> int:
        """Accepted SQEs whose final CQE has not been reaped."""
        return self._inflight

    def probe_opcodes(self) -> frozenset[int]:
        """The kernel's supported opcodes (probed once)."""
        if self._opcodes is None:
            self._opcodes = self.ring.probe()
        return self._opcodes

    def lane_builder(self) -> UringLanes | None:
        """Each calling thread may have a ring of its own (:class:`~ksvc_host.traits.OwnRings`).

        Not when a component rewrites this ring's SQEs or completions
        (registered or provided buffers): those run only here.
        """
        if self._preparers or self._filters:
            return None
        return UringLanes(self.probe_opcodes())

    def set_wakeup_fd(self, fd: int) -> None:
        """Have the kernel write eventfd *fd* on every CQE."""
        for ring in self._rings():
            ring.register_eventfd(fd)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Cancel everything in flight, reap it, close the ring."""
        if self.ring.closed:
            return
        if self._inflight:
            self.cancel_all()
            self.flush()
            deadline = time.monotonic() + timeout
            while (self._inflight or self._internal) and time.monotonic() < deadline:
                if not self.completions_ready():
                    time.sleep(0.001)
                self.poll_completions(1024)
        for ring in self._rings():
            ring.close()


def _express_ring(
    r: IoUring, lo: int, hi: int, rewritten: frozenset[int], assist: ExpressRing | None = None, backlog: int = 0
) -> ExpressRing:
    a = r.addresses()
    return ExpressRing(
        r.fd, a["sq_head"], a["sq_tail"], a["sq_flags"], a["sq_array"], r._sq_mask, r.sq_entries,
        a["cq_head"], a["cq_tail"], r._cq_mask, a["sqes"], a["cqes"], r._sqpoll, lo, hi, rewritten, assist, backlog,
    )  # fmt: skip
