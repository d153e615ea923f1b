"""The dispatcher's express lane: plain reads and writes, ring to SQE to ring, in one C call.

The dispatcher's generic loop (:mod:`ksvc_host.dispatch.turn`) costs
microseconds of Python per entry. Most entries of a busy channel are the
simplest kind: ``read``, ``write``, ``pread64``, ``pwrite64``, or
``recvfrom``/``sendto`` without an address, with no flags, routed to
io_uring. This lane (:class:`~ksvc_host.traits.ExpressLane`) takes the run
of such entries at the head of the submit ring, fills their SQEs on the
basic backend's ring and enters the kernel once, and later moves their CQEs
straight into completion entries: no Python per entry. It stops at the
first entry it does not take, which the generic loop then handles, so order
and every rule (LINKED, DRAIN, O_NONBLOCK and seekability checks,
back-pressure) are kept. The loops are ``express.c`` (compiled as
``ksvc_basic._express``) or :mod:`ksvc_basic.express_reference`, following
:data:`ksvc_host.fastpath.IMPLEMENTATION`.

Beside an SQPOLL ring the backend may keep a plain one, the assist ring
(:attr:`ExpressRing.assist`): the lane sends positioned reads and writes
there once the SQ thread has ``assist_backlog`` SQEs unconsumed, or when its
SQ is full, and the thread running the turn executes them in its own
``io_uring_enter`` while the kernel's SQ thread reads the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ksvc_basic import express_reference, translation
from ksvc_host import fastpath
from ksvc_host.traits.capabilities import EXPRESS_TAG, ExpressChannel, ExpressCompletionSink

try:
    from ksvc_basic import _express  # type: ignore[attr-defined]
except ImportError:  # not built: the reference loops
    _express = None

EXPRESS_KINDS: Final = frozenset({translation.K_STREAM, translation.K_POSITIONED, translation.K_SOCKET})
"""The kinds of call the lane takes, of :data:`ksvc_basic.translation.CALLS`: plain reads and writes
(``read``, ``write``, ``pread64``, ``pwrite64``, ``recvfrom``/``sendto`` without an address)."""


class ExpressRing(NamedTuple):
    """Raw addresses of an io_uring, for the express lane.

    The backend builds this only when an SQE it would build for a plain
    read or write needs no rewriting outside ``[exclude_lo, exclude_hi)``
    and every CQE may be reaped past it.
    """

    ring_fd: int
    sq_head: int
    sq_tail: int
    sq_flags: int
    sq_array: int
    sq_mask: int
    sq_entries: int
    cq_head: int
    cq_tail: int
    cq_mask: int
    sqes: int
    cqes: int
    sqpoll: bool
    exclude_lo: int = 0
    exclude_hi: int = 0
    rewritten_opcodes: frozenset[int] = frozenset()
    """Opcodes a feature rewrites on submit (send-zc: SEND): the lane does not take them."""
    assist: ExpressRing | None = None
    """Beside an SQPOLL ring: the assist ring, a plain ring whose submissions run on the submitting thread."""
    assist_backlog: int = 0
    """Positioned reads and writes go to ``assist`` once the SQPOLL ring has this many SQEs unconsumed
    (0: only when its SQ is full)."""


class _ReferenceLoops:
    ksvc_express_submit = staticmethod(express_reference.express_submit)
    ksvc_express_reap = staticmethod(express_reference.express_reap)
    ksvc_express_turn = staticmethod(express_reference.express_turn)


def _loops() -> tuple[Any, Any]:
    """The compiled loops on the native fast path (when built), else the reference."""
    if fastpath.IMPLEMENTATION == "native" and _express is not None:
        return _express.ffi, _express.lib
    return express_reference.ffi, _ReferenceLoops


class ExpressLane:
    """The lane of one dispatcher (:class:`~ksvc_host.traits.ExpressLane`); built by :func:`build`."""

    def __init__(
        self,
        rings: ExpressChannel,
        sink: ExpressCompletionSink,
        ring: ExpressRing,
        opcodes: dict[int, tuple[int, int]],
        room: Callable[[], int],
        account: Callable[[int, int, int], None],
    ):
        ffi, self._lib = _loops()
        self._sink = sink
        x = self._x = ffi.new("struct ksvc_express *")

        def ptr(kind: str, address: int) -> Any:
            return ffi.cast(kind, address)

        sring, cring = rings.submit_ring, rings.completion_ring
        x.sring = ptr("uint8_t *", sring.address)
        x.smask = sring.mask
        x.cring = ptr("uint8_t *", cring.address)
        x.csize = cring.size
        x.sq_head, x.sq_tail = ptr("uint32_t *", ring.sq_head), ptr("uint32_t *", ring.sq_tail)
        x.sq_flags, x.sq_array = ptr("uint32_t *", ring.sq_flags), ptr("uint32_t *", ring.sq_array)
        x.sq_mask, x.sq_entries = ring.sq_mask, ring.sq_entries
        x.cq_head, x.cq_tail = ptr("uint32_t *", ring.cq_head), ptr("uint32_t *", ring.cq_tail)
        x.cq_mask = ring.cq_mask
        x.sqes, x.cqes = ptr("uint8_t *", ring.sqes), ptr("uint8_t *", ring.cqes)
        x.ring_fd, x.sqpoll = ring.ring_fd, int(ring.sqpoll)
        x.excl_lo, x.excl_hi = ring.exclude_lo, ring.exclude_hi
        x.tag = EXPRESS_TAG
        x.a_ring_fd = -1
        if ring.assist is not None:  # an SQPOLL ring's assist ring (see express.c)
            a = ring.assist
            x.a_ring_fd, x.a_backlog = a.ring_fd, ring.assist_backlog
            x.a_sq_head, x.a_sq_tail = ptr("uint32_t *", a.sq_head), ptr("uint32_t *", a.sq_tail)
            x.a_sq_array, x.a_sq_mask, x.a_sq_entries = ptr("uint32_t *", a.sq_array), a.sq_mask, a.sq_entries
            x.a_cq_head, x.a_cq_tail = ptr("uint32_t *", a.cq_head), ptr("uint32_t *", a.cq_tail)
            x.a_cq_mask = a.cq_mask
            x.a_sqes, x.a_cqes = ptr("uint8_t *", a.sqes), ptr("uint8_t *", a.cqes)
        for nr, (op, kind) in opcodes.items():
            x.opcode[nr] = op
            x.kind[nr] = kind
        self.inflight = 0
        """Express entries submitted and not yet completed."""
        self.entries = 0
        """Entries taken by the lane since it was built."""
        self.cq_clear = False
        """The last :meth:`reap` emptied the CQ (nothing there for the backend's own reap)."""
        self.drained = False
        """The last :meth:`submit` took every entry in the submit ring (nothing for the generic loop)."""
        self._room = room
        self._account = account

    def submit(self, head: int, max_take: int) -> int:
        """Take simple entries from submit-ring counter *head*; return how many (the new head is head + that).

        Afterwards :attr:`drained` says whether it left the ring empty.
        """
        room = self._room()
        if room <= 0:
            self.drained = False
            return 0
        x = self._x
        x.shead = head
        x.room = room
        n = self._lib.ksvc_express_submit(x, max_take)
        self.drained = not x.s_left
        if n <= 0:
            return 0  # -EUCLEAN: corrupted counters, which the generic loop reports
        self._account(n, 0, int(x.unsubmitted))
        self.inflight += n
        self.entries += n
        if x.error:
            raise OSError(-x.error, f"io_uring_enter (express lane): {os.strerror(-x.error)}")
        return int(n)

    def turn(self, head: int, max_take: int) -> tuple[int, int]:
        """:meth:`reap` then :meth:`submit` in one call; return (completed, taken).

        For a dispatcher turn when nothing but express entries is in flight.
        """
        x = self._x
        x.ctail = self._sink.pending_tail
        x.shead = head
        x.room = max(0, self._room())
        n = self._lib.ksvc_express_turn(x, max_take)
        completed = int(x.completed)
        self.cq_clear = not x.cq_left
        self.drained = not x.s_left
        if n < 0:
            n = 0  # -EUCLEAN: corrupted counters, which the generic loop reports
        if completed:
            self._sink.pending_tail = int(x.ctail)
        if n or completed:
            self._account(n, completed, int(x.unsubmitted))
            self.inflight += n - completed
            self.entries += n
        if x.error:
            raise OSError(-x.error, f"io_uring_enter (express lane): {os.strerror(-x.error)}")
        return completed, int(n)

    def reap(self) -> int:
        """Move express CQEs at the head of the CQ into the completion ring; return how many.

        Afterwards :attr:`cq_clear` says whether this reap left the CQ empty.
        """
        if not self.inflight:
            self.cq_clear = False  # not looked at
            return 0
        x = self._x
        x.ctail = self._sink.pending_tail
        n = self._lib.ksvc_express_reap(x)
        self.cq_clear = not x.cq_left
        if n:
            self._sink.pending_tail = int(x.ctail)
            self._account(0, n, 0)
            self.inflight -= n
        return int(n)

    def completed_elsewhere(self) -> None:
        """One express CQE was reaped by the backend's own reap (behind a CQE of the generic loop)."""
        self.inflight -= 1

    @property
    def has_assist_ring(self) -> bool:
        """True when positioned entries can run on the submitting thread (an SQPOLL ring's partner)."""
        return int(self._x.a_ring_fd) >= 0 and not int(self._x.ephemeral)

    def forgo_assist_ring(self) -> None:
        """Never use the assist ring: the turns run on callers' threads (the inline driver), any of which may
        exit before its requests end, and the kernel ends a request when its submitter exits."""
        self._x.ephemeral = 1

    @property
    def assist_entries(self) -> int:
        """Entries the lane ran on the submitting thread (an SQPOLL ring's assist ring)."""
        return int(self._x.a_total)


def build(
    rings: ExpressChannel,
    sink: ExpressCompletionSink,
    ring: ExpressRing,
    routes: frozenset[int],
    supported: frozenset[int],
    room: Callable[[], int],
    account: Callable[[int, int, int], None],
) -> ExpressLane | None:
    """The lane for the syscalls *routes* on *ring* (``None`` when it would take none of them).

    *supported*: the kernel's opcodes; *room* and *account*: the backend's
    in-flight guard, asked before each submit and told what the lane did."""
    opcodes = {
        nr: (op, kind)
        for nr, (op, kind) in translation.table(supported, EXPRESS_KINDS).items()
        if nr in routes and op not in ring.rewritten_opcodes
    }
    if not opcodes:
        return None
    return ExpressLane(rings, sink, ring, opcodes, room, account)
