"""The turn: one pass of the dispatcher's loop (docs/design.md §5).

Each :meth:`Turn.run`:

1. reaps io_uring and worker completions into the completion sink;
2. takes up to 64 submit entries from the submit ring;
3. routes each: Tier 0 answered here, Tier 1 to an SQE, Tier 2 to a worker,
   Tier 3 completed with an error;
4. flushes the io_uring once for the batch and notifies the consumer once.

LINKED chains and DRAIN barriers follow io_uring's IOSQE_IO_LINK and
IOSQE_IO_DRAIN, across tiers, because the turn sequences them itself.
Back-pressure (a full SQ, worker queue or completion ring) keeps entries
and completions here until there is room: nothing is dropped.

The turn knows nothing of who runs it: a driver
(:mod:`ksvc_host.dispatch.drivers`) calls :meth:`Turn.run`, one call at a
time, on its own thread or on a caller's. Shutdown is a drain
(:meth:`Turn.begin_drain`, :meth:`Turn.drained`) the driver runs turns
for until it is over.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.io_uring import IORING_ACCEPT_MULTISHOT, CqeFlag, IoringOp
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.channel.base import Channel
from ksvc_host.channel.ring import RingCorrupted
from ksvc_host.routing import io_uring_calls, is_refused
from ksvc_host.traits import (
    CancelAllIoBackend,
    CancellableWorkerPool,
    CompletionSink,
    IoBackend,
    MultishotIoBackend,
    SyscallRouter,
    Tier,
    WorkerPool,
)
from ksvc_host.traits.capabilities import EXPRESS_TAG, ExpressCompletionSink, ExpressIoBackend, ExpressLane
from ksvc_host.translate import sqe_for, translate

ENV_NO_EXPRESS: Final = "KSVC_NO_EXPRESS"
"""Set to ``1`` to send every entry through the generic loop (no express lane; for comparison and debugging)."""

_PAGE_ANSWERS = {
    SYSCALLS["getpid"]: "pid",
    SYSCALLS["getppid"]: "ppid",
    SYSCALLS["getuid"]: "uid",
    SYSCALLS["getgid"]: "gid",
    SYSCALLS["geteuid"]: "euid",
    SYSCALLS["getegid"]: "egid",
    SYSCALLS["getpgrp"]: "pgid",
}
_NR_GETSID = SYSCALLS["getsid"]
_CQE_MORE = int(CqeFlag.MORE)  # a plain int: IntFlag & costs about 1 us per completion (profiled)
_IDENTITY_REFRESH_NS = 50_000_000
_STATS_FIELDS = ("entries_processed", "batches_processed", "io_uring_inflight", "worker_pool_active",
                 "submit_head", "submit_tail", "completion_head", "completion_tail")  # fmt: skip
_STATS_OFFSET = L.SHARED_PAGE_FIELDS[_STATS_FIELDS[0]].offset
_STATS_BLOCK = struct.Struct("<8Q")
assert [L.SHARED_PAGE_FIELDS[f].offset for f in _STATS_FIELDS] == [_STATS_OFFSET + 8 * i for i in range(8)]


def _express_lane(
    channel: Channel, router: SyscallRouter, io_backend: IoBackend, sink: CompletionSink
) -> ExpressLane | None:
    """The backend's express lane for this stack, or ``None`` when a component cannot take part (or it is off)."""
    if os.environ.get(ENV_NO_EXPRESS, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    if not isinstance(io_backend, ExpressIoBackend) or not isinstance(sink, ExpressCompletionSink):
        return None
    if sink.ring is not channel.completion_ring:
        return None  # the lane writes completion entries into the channel's ring itself
    return io_backend.express_lane(channel, sink, io_uring_calls(router))


class _Op:
    """One issued entry awaiting its completion."""

    __slots__ = ("corr_id", "finish", "keep", "full_length", "chain", "tier", "drain")

    def __init__(self, corr_id: int, tier: Tier, chain: list[L.SubmitEntry], drain: bool) -> None:
        self.corr_id = corr_id
        self.tier = tier
        self.chain = chain
        self.drain = drain
        self.finish: Callable[[int], int] | None = None
        self.keep: Any = None
        self.full_length = -1


class Turn:
    """The state of the loop and one pass of it (:meth:`run`); see the module doc.

    Not thread-safe: whoever runs turns runs one at a time (the drivers
    hold a lock around :meth:`run`). The other methods are safe from any
    thread where their docstring says so.
    """

    def __init__(
        self,
        *,
        channel: Channel,
        router: SyscallRouter,
        io_backend: IoBackend,
        worker_pool: WorkerPool,
        sink: CompletionSink,
        on_batch: Callable[[int], None] | None = None,
        batch_size: int = L.MAX_BATCH,
    ) -> None:
        self.channel = channel
        self.router = router
        self.io_backend = io_backend
        self.worker_pool = worker_pool
        self.sink = sink
        self.batch_size = max(1, min(batch_size, L.MAX_BATCH))
        self._on_batch = on_batch
        self._cancellable_pool: CancellableWorkerPool | None = (
            worker_pool if isinstance(worker_pool, CancellableWorkerPool) else None
        )
        self.still_in_kernel: set[int] = set()
        """Correlation ids completed with -ECANCELED at shutdown while a worker was still inside their syscall:
        whoever owns their memory must keep it (the front end does)."""

        self.worker_state = L.WORKER_STATE_IDLE
        """What the shared page's ``worker_state`` says while turns run (set by the driver)."""
        self._inflight: dict[int, _Op] = {}
        self._held: deque[list[L.SubmitEntry]] = deque()  # chains taken from the ring, not yet issued
        self._overflow: deque[tuple[int, int, int]] = deque()  # completions the sink had no room for
        self._drain_in_flight = False
        """A DRAIN entry is in flight: nothing after it is issued until it completes."""
        self._cancels: deque[int] = deque()
        self._tokens = itertools.count(1)
        self._unpublished = False
        """Completions were pushed to the sink since it was last flushed and notified."""
        self._issued_io = 0
        self._ring_head = channel.submit_ring.head
        self._last_identity = 0

        self.entries_processed = 0
        self.batches_processed = 0
        self._drain_deadline: float | None = None
        """Set by :meth:`begin_drain`: when work still running gets cancelled."""
        self._drain_cancelled = False
        """The drain deadline passed once and what was in flight was cancelled."""
        self.express = _express_lane(channel, router, io_backend, sink)
        """The express lane for plain reads and writes (``None`` when this stack cannot have one)."""
        self.cancel_all: CancelAllIoBackend | None = (
            io_backend if isinstance(io_backend, CancelAllIoBackend) else None
        )
        self.multishot_accept = isinstance(io_backend, MultishotIoBackend) and bool(io_backend.multishot_accept)
        """ACCEPT may carry IORING_ACCEPT_MULTISHOT (the ``multishot-accept`` feature)."""

    @property
    def express_entries(self) -> int:
        """Entries the express lane took (0 without one)."""
        return self.express.entries if self.express is not None else 0

    def _express_inflight(self) -> int:
        return self.express.inflight if self.express is not None else 0

    # Wake-ups -------------------------------------------------------------------
    @property
    def has_overflow(self) -> bool:
        """True while completions wait for room in the sink (safe from any thread)."""
        return bool(self._overflow)

    def idle(self) -> bool:
        """Nothing in flight, held, overflowing or waiting in the submit ring."""
        return not (
            self._inflight or self._express_inflight() or self._held or self._overflow
            or self.channel.submit_ring.used()
        )  # fmt: skip

    # The loop ----------------------------------------------------------------------
    # The turn ------------------------------------------------------------------------

    def run(self) -> bool:
        """One turn of the loop; True when anything moved."""
        lane = self.express
        if lane is not None and not (
            self._cancels or self._overflow or self._held or self._drain_in_flight or self._inflight
            or self._unpublished
        ):  # fmt: skip
            return self._express_turn(lane)
        if self._cancels:
            self._process_cancels()
        progress = self._reap()
        if self._unpublished:
            self._publish_completions()
        taken = self._take()
        progress = self._issue() or progress or taken > 0
        if self._issued_io:
            self._flush_io()
        self._end_turn(taken)
        return progress

    def _express_turn(self, lane: Any) -> bool:
        """:meth:`run` while only express entries are in flight: the lane's reap and submit in one call.

        Profiled: a streaming read's turn cost ~6 us in the generic steps,
        most of it Python around two C calls. Whatever the lane leaves (a
        CQE of another kind, an entry it does not take) goes through the
        generic steps in the same turn.
        """
        completed, taken = lane.turn(self._ring_head, self.channel.submit_ring.size)
        self._ring_head += taken
        progress = bool(completed or taken)
        if completed:
            self.entries_processed += completed
            self._unpublished = True
        if not lane.cq_clear:
            progress = self._reap() or progress
        if not lane.drained:
            generic = self._take_generic()
            taken += generic
            progress = self._issue() or progress or generic > 0
            if self._issued_io:
                self._flush_io()
        self._end_turn(taken)
        return progress

    def _end_turn(self, taken: int) -> None:
        """Publish what the turn completed (waking whoever waits) and count the batch."""
        if self._unpublished:
            self._publish_completions()
        if taken:
            self.batches_processed += 1
            if self._on_batch is not None:
                self._on_batch(taken)

    def _flush_io(self) -> None:
        """Hand the SQEs this turn prepared to the kernel."""
        self.io_backend.flush()
        self._issued_io = 0

    def _publish_completions(self) -> None:
        self._unpublished = False
        self._publish_stats()  # before the wake-up, so a woken caller reads current statistics
        self.sink.flush_and_notify()

    def ready_without_wakeup(self) -> bool:
        """Entries wait in the ring that a turn can take (they may have come without a wake-up)."""
        return self.channel.submit_ring.used() > 0 and len(self._held) < self.batch_size

    def wait_timeout(self) -> float | None:
        """How long an idle driver may sleep: ``None`` (until woken) unless it must retry or drain."""
        if self._drain_deadline is not None:
            return max(0.0, min(0.05, self._drain_deadline - time.monotonic()))
        if (self._held and not (self._inflight or self._express_inflight())) or self._overflow:
            # A tier refused work while nothing of ours is in flight to wake us when it frees up,
            # or the sink is full: the consumer's reap wakes us, and a short bounded retry covers
            # a sink or tier full for reasons of its own. Never a spin.
            return 0.001
        return None

    def cancel(self, corr_id: int) -> None:
        """Queue a cancel of the entry *corr_id* for the next turn (safe from any thread; see ``request_cancel``)."""
        self._cancels.append(corr_id)

    def _process_cancels(self) -> None:
        wanted = set()
        while self._cancels:
            wanted.add(self._cancels.popleft())
        pool = self._cancellable_pool
        for token, op in self._inflight.items():
            if op.corr_id not in wanted:
                continue
            wanted.discard(op.corr_id)
            if op.tier is Tier.IO_URING:
                self.io_backend.cancel(token)
                self._issued_io += 1
            elif op.tier is Tier.WORKER and pool is not None:
                pool.cancel(token)  # queued: dropped; running: its syscall is interrupted
        if self.express is not None and self.express.inflight:
            for corr in wanted:  # perhaps an express entry; a cancel that finds nothing is harmless
                self.io_backend.cancel(EXPRESS_TAG | corr)
                self._issued_io += 1

    # Reaping ---------------------------------------------------------------------------

    def _reap(self) -> bool:
        progress = False
        while self._overflow:
            corr, res, flags = self._overflow[0]
            if not self.sink.push(corr, res, flags):
                break
            self._overflow.popleft()
            self._unpublished = progress = True
        express = self.express
        if express is not None and not self._overflow:
            moved = express.reap()
            if moved:
                self._unpublished = progress = True
                self.entries_processed += moved
            if express.cq_clear and not self._inflight:
                # Only express entries were in flight and the lane emptied the CQ: no CQE or worker
                # result can be waiting (profiled: the two empty polls cost ~3 us per streaming turn).
                return progress
        for user_data, res, flags in self.io_backend.poll_completions(self.batch_size * 4):
            progress = True
            op = self._inflight.get(user_data)
            if op is None:
                if user_data & EXPRESS_TAG and self.express is not None:
                    self.express.completed_elsewhere()  # behind a CQE of ours: reaped here
                    self._emit(user_data & (EXPRESS_TAG - 1), res, 0)
                continue
            if flags & _CQE_MORE:  # a multishot series goes on
                self._emit(op.corr_id, res, L.COMPLETION_FLAG_MORE)
                continue
            del self._inflight[user_data]
            self._finish(op, res)
        for token, res in self.worker_pool.poll_completions(self.batch_size * 4):
            progress = True
            op = self._inflight.pop(token, None)
            if op is not None:
                self._finish(op, res)
        return progress

    def _finish(self, op: _Op, res: int) -> None:
        if op.finish is not None:
            try:
                res = op.finish(res)
            except Exception:  # a finisher must never lose the completion
                res = -errno.EIO
        op.keep = None
        self._emit(op.corr_id, res, 0)
        if op.drain:
            self._drain_in_flight = False
        if op.chain:
            ok = res >= 0 and (op.full_length < 0 or res == op.full_length)
            if ok:
                self._held.appendleft(op.chain)
            else:
                for entry in op.chain:
                    self._emit(entry.corr_id, -errno.ECANCELED, 0)

    def _emit(self, corr_id: int, result: int, flags: int) -> None:
        if self._overflow or not self.sink.push(corr_id, result, flags):
            self._overflow.append((corr_id, result, flags))
        else:
            self._unpublished = True
        if not flags & L.COMPLETION_FLAG_MORE:
            self.entries_processed += 1

    # Taking entries ------------------------------------------------------------------

    def _take(self) -> int:
        """Take entries from the submit ring: the express lane's run first, then the generic loop's."""
        express = 0
        lane = self.express
        if lane is not None and not (self._held or self._drain_in_flight or self._overflow):
            express = lane.submit(self._ring_head, self.channel.submit_ring.size)
            self._ring_head += express
            if lane.drained:
                return express  # the lane took every entry there was
        return express + self._take_generic()

    def _take_generic(self) -> int:
        if len(self._held) >= self.batch_size:
            return 0  # back-pressure: leave entries in the ring until we issue what we hold
        ring = self.channel.submit_ring
        head = self._ring_head
        tail = ring.tail
        used = ring.check(head, tail)
        if not used:
            return 0
        want = min(used, self.batch_size)
        buf = ring.buf
        chain: list[L.SubmitEntry] = []
        taken = 0
        while taken < used:
            entry = L.SubmitEntry.unpack(buf, ring.slot_offset(head + taken))
            taken += 1
            chain.append(entry)
            # A LINKED entry at the visible tail ends its chain, like io_uring at the end of a submit.
            if not entry.flags & L.SUBMIT_FLAG_LINKED or taken == used:
                self._held.append(chain)
                chain = []
                if taken >= want:
                    break
        self._ring_head = head + taken
        ring.publish_head(self._ring_head)
        return taken

    # Issuing ---------------------------------------------------------------------------

    def _issue(self) -> bool:
        progress = False
        while self._held:
            if self._drain_in_flight:
                break
            chain = self._held[0]
            entry = chain[0]
            if entry.flags & L.SUBMIT_FLAG_DRAIN and (self._inflight or self._express_inflight()):
                break
            # Pop first: completing at once may push a chain continuation to the front.
            self._held.popleft()
            if not self._issue_one(entry, chain[1:]):
                self._held.appendleft(chain)
                break
            progress = True
        return progress

    def _issue_one(self, entry: L.SubmitEntry, rest: list[L.SubmitEntry]) -> bool:
        """Start *entry*; False when the target tier is full (nothing changes then)."""
        if entry.flags & ~L.SUBMIT_FLAGS_VALID:
            self._complete_now(entry, -errno.EINVAL, rest)
            return True
        nr = entry.syscall_nr
        route = self.router.route(nr)
        drain = bool(entry.flags & L.SUBMIT_FLAG_DRAIN)
        if entry.flags & L.SUBMIT_FLAG_MULTISHOT:
            return self._issue_multishot(entry, rest, route)
        if route.tier is Tier.IO_URING:
            tr = translate(nr, entry.args)
            if tr is not None:
                token = next(self._tokens)
                if not self.io_backend.submit(token, tr.sqe):
                    return False
                op = _Op(entry.corr_id, Tier.IO_URING, rest, drain)
                op.finish, op.keep, op.full_length = tr.finish, tr.keep, tr.full_length
                self._inflight[token] = op
                self._issued_io += 1
                self._drain_in_flight = drain
                return True
            route = route._replace(tier=Tier.WORKER)  # no exact SQE for these arguments and descriptors
        if route.tier is Tier.WORKER:
            token = next(self._tokens)
            if not self.worker_pool.enqueue(token, nr, entry.args):
                return False
            self._inflight[token] = _Op(entry.corr_id, Tier.WORKER, rest, drain)
            self._drain_in_flight = drain
            return True
        if route.tier is Tier.SHARED_PAGE:
            self._complete_now(entry, self._tier0(nr, entry.args), rest)
            return True
        self._complete_now(entry, -errno.EPERM if is_refused(nr) else -errno.ENOSYS, rest)
        return True

    def _issue_multishot(self, entry: L.SubmitEntry, rest: list[L.SubmitEntry], route: Any) -> bool:
        """An accept that yields a completion per connection, when the backend offers it."""
        tr = sqe_for(entry.syscall_nr, entry.args) if route.tier is Tier.IO_URING else None
        if tr is None or tr.sqe.opcode != IoringOp.ACCEPT or not self.multishot_accept:
            self._complete_now(entry, -errno.EOPNOTSUPP, rest)
            return True
        tr.sqe.ioprio |= IORING_ACCEPT_MULTISHOT
        token = next(self._tokens)
        if not self.io_backend.submit(token, tr.sqe):
            return False
        op = _Op(entry.corr_id, Tier.IO_URING, rest, False)
        op.keep = tr.keep
        self._inflight[token] = op
        self._issued_io += 1
        return True

    def _complete_now(self, entry: L.SubmitEntry, result: int, rest: list[L.SubmitEntry]) -> None:
        op = _Op(entry.corr_id, Tier.SHARED_PAGE, rest, False)
        self._finish(op, result)

    def _tier0(self, nr: int, args: tuple[int, ...]) -> int:
        field = _PAGE_ANSWERS.get(nr)
        if field is None and nr == _NR_GETSID and args[0] == 0:
            field = "sid"
        if field is not None:
            return int(self.channel.read_page_field(field))
        # getsid(other), getrlimit and uname need more than the page holds; they never block.
        return native.syscall_u64(nr, args)

    # Statistics ------------------------------------------------------------------------

    def _publish_stats(self) -> None:
        ch = self.channel
        if not ch.writable_page:
            return
        # entries_processed .. completion_tail are eight consecutive u64 fields: one store (profiled: the
        # field-by-field version cost 14 us per turn)
        _STATS_BLOCK.pack_into(
            ch.page, _STATS_OFFSET, self.entries_processed, self.batches_processed, self.io_backend.inflight(),
            self.worker_pool.busy, self._ring_head, ch.submit_ring.tail, ch.completion_ring.head,
            ch.completion_ring.tail,
        )
        w = ch.write_page_field
        w("worker_state", self.worker_state)
        now = time.monotonic_ns()
        w("clock_monotonic_ns", now)
        if now - self._last_identity > _IDENTITY_REFRESH_NS:
            self._last_identity = now
            ch.refresh_identity()
            ch.refresh_clocks()

    # Shutdown and failure ---------------------------------------------------------------

    # Shutdown: drain, cancel, abandon ------------------------------------------------------

    def begin_drain(self, timeout: float) -> None:
        """Start shutting down: what is submitted still completes; after *timeout* seconds it is cancelled."""
        self._drain_deadline = time.monotonic() + timeout

    @property
    def draining(self) -> bool:
        """True once :meth:`begin_drain` was called."""
        return self._drain_deadline is not None

    def drained(self) -> bool:
        """Whether the drain is over; past its deadline, cancel what is in flight, then abandon it.

        Called by the driver between turns while :attr:`draining`.
        """
        # Completions held for a full sink do not keep us running: the front end takes them
        # with abandoned() once we have stopped.
        try:
            waiting = self.channel.submit_ring.used()
        except RingCorrupted:
            waiting = 0  # nothing in a corrupted ring can be trusted; it is not worth waiting for
        if not (self._inflight or self._express_inflight() or self._held or waiting):
            return True
        deadline = self._drain_deadline
        if deadline is None or time.monotonic() < deadline:
            return False
        if not self._drain_cancelled:
            self._drain_cancelled = True
            pool = self._cancellable_pool
            for token, op in list(self._inflight.items()):
                if op.tier is Tier.IO_URING:
                    self.io_backend.cancel(token)
                elif op.tier is Tier.WORKER and pool is not None:
                    pool.cancel(token)
            cancel_all = self.cancel_all
            if self._express_inflight() and cancel_all is not None:
                cancel_all.cancel_all()  # express entries have no token of ours: cancel them all at once
            self.io_backend.flush()
            self._drain_deadline = time.monotonic() + 1.0
            return False
        self.abandon(-errno.ECANCELED)
        return True

    def abandon(self, result: int) -> None:
        """Complete everything not yet completed with *result*."""
        chains = list(self._held)
        self._held.clear()
        ring = self.channel.submit_ring
        try:
            while ring.check(self._ring_head, ring.tail):
                chains.append([L.SubmitEntry.unpack(ring.buf, ring.slot_offset(self._ring_head))])
                self._ring_head += 1
            ring.publish_head(self._ring_head)
        except Exception:  # a corrupted ring: what is in it cannot be trusted
            pass
        pool = self._cancellable_pool
        for token, op in list(self._inflight.items()):
            if op.tier is Tier.WORKER and (pool is None or pool.running(token)):
                self.still_in_kernel.add(op.corr_id)  # a worker may still write into its memory
            self._emit(op.corr_id, result, 0)
            for entry in op.chain:
                self._emit(entry.corr_id, -errno.ECANCELED, 0)
        self._inflight.clear()
        for chain in chains:
            for entry in chain:
                self._emit(entry.corr_id, result, 0)
        try:
            while self._overflow:
                corr, res, flags = self._overflow[0]
                if not self.sink.push(corr, res, flags):
                    break
                self._overflow.popleft()
            self.sink.flush_and_notify()
        except Exception:
            pass

    def take_overflow(self) -> list[tuple[int, int, int]]:
        """Completions that never fit in the sink (returned to the caller after a stop)."""
        out = list(self._overflow)
        self._overflow.clear()
        return out

