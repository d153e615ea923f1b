"""OwnRings: an io backend that gives each submitting thread an io_uring of its own.

A capability of :class:`~ksvc_host.traits.IoBackend`, resolved once when a
front end is built. Where the backend offers it, the front end gives each
calling thread (and each event loop) a *lane* (:mod:`ksvc_host.lanes`): a
channel and an io_uring that only that thread submits to, so ordinary calls
are made on the caller's thread with no hand-over to the dispatcher
(docs/design.md §12).

The lane is the backend's: its ring, its setup flags, its translation of
syscalls to SQEs. The host owns when lanes are built, which thread owns
each, and which syscalls the router lets them take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable


class Lane(Protocol):
    """One thread's channel and io_uring, driven from that thread only.

    Every entry point returns ``None`` (or 0) when the lane does not take
    the call (a syscall it is not routed, a descriptor or arguments whose
    io_uring operation would not give the direct syscall's result, another
    thread than the owner, a full lane, a closing one): the caller then
    takes the shared channel. Results equal the direct syscall's.

    Tokens name entries in flight; futures are asyncio futures (or any
    object with ``set_result``/``set_exception``), resolved by :meth:`turn`.
    """

    # Blocking: write the entry, submit, wait in the kernel for its answer.
    def call(self, nr: int, *args: int) -> int | None:
        """The syscall's result (``-errno`` on failure)."""
        ...

    def call_sqe(self, keep: Any, sqe: bytes) -> int | None:
        """Run an SQE the caller built (64 bytes, no SQE flags; the lane sets ``user_data``): the CQE's
        result. For the calls the lane has no translation of its own for (the host's Python one)."""
        ...

    def read(self, nr: int, fd: int, n: int, offset_or_flags: int) -> bytes | None:
        """``read``/``pread64``/``recvfrom`` into new bytes; a failure raises ``OSError``."""
        ...

    def read_many(self, nr: int, fd: int, size: int, offsets: Any) -> list[bytes | int] | None:
        """Positioned reads of *size* at each offset: bytes (a short read shorter) or ``-errno`` each."""
        ...

    def rw_many(self, nr: int, fd: int, buffer: Any, size: int, offsets: Any) -> list[int] | None:
        """``pread64``/``pwrite64`` of entry *i* into or from ``buffer[i*size:(i+1)*size]`` at ``offsets[i]``:
        the byte count or ``-errno`` each."""
        ...

    def write(self, nr: int, fd: int, data: Any, offset_or_flags: int) -> int | None:
        """``write``/``pwrite64``/``sendto`` from *data*'s buffer; a failure raises ``OSError``."""
        ...

    # Loop: queue entries with a future or callback each; turn() submits and delivers.
    def start(self, fut: Any, keep: Any, nr: int, *args: int) -> int | None:
        """Queue a call; *fut* gets its result (``-errno`` on failure); *keep* lives until then."""
        ...

    def start_sqe(self, fut: Any, keep: Any, sqe: bytes) -> int | None:
        """Queue an SQE the caller built, as :meth:`call_sqe`; *fut* gets the CQE's result."""
        ...

    def start_read(self, fut: Any, nr: int, fd: int, n: int, offset_or_flags: int) -> int | None:
        """Queue a read into new bytes."""
        ...

    def start_write(self, fut: Any, nr: int, fd: int, data: Any, offset_or_flags: int) -> int | None:
        """Queue a write from *data*'s buffer."""
        ...

    def start_read_many(self, fut: Any, nr: int, fd: int, size: int, offsets: Any) -> int:
        """Queue positioned reads at the first offsets (how many started); *fut* gets their results."""
        ...

    def start_rw_many(self, fut: Any, nr: int, fd: int, buffer: Any, size: int, offsets: Any, first: int) -> int:
        """Queue ``pread64``/``pwrite64`` of entry *i* into or from ``buffer[i*size:(i+1)*size]`` at
        ``offsets[i]``, from *first* on (how many started); *fut* gets their byte counts (``-errno`` each);
        the lane holds *buffer* until the last one is answered."""
        ...

    def receive(self, on_data: Any, on_end: Any, fd: int, size: int) -> int | None:
        """A receive loop: ``on_data(bytes)`` per arrival, then ``on_end(why)`` once (0, -errno, exception, None)."""
        ...

    def accept_loop(self, on_conn: Any, on_end: Any, fd: int, flags: int) -> int | None:
        """One multishot accept: ``on_conn(new_fd)`` per connection, then ``on_end(-errno)`` once."""
        ...

    def send(self, on_sent: Any, fd: int, data: Any, flags: int) -> int | None:
        """Send *data*; ``on_sent(result)`` only when short, failed, or watched."""
        ...

    def watch(self, token: int) -> bool:
        """Have a send's ``on_sent`` called when it ends (False: it already ended whole)."""
        ...

    def stop(self, token: int) -> bool:
        """A receive loop queues no next receive."""
        ...

    def retarget(self, token: int, on_data: Any) -> bool:
        """A receive loop delivers to *on_data* from now on."""
        ...

    def cancel(self, token: int) -> bool:
        """Ask the kernel to cancel a callback entry (its callback still runs once)."""
        ...

    def turn(self, run_work: bool = True) -> int:
        """Submit queued entries, reap, deliver the completions in one call; how many were delivered.

        A turn delivers a bounded number (then :attr:`unfinished` is true), so that peers which answer at once
        cannot keep it going while the event loop's other callbacks wait."""
        ...

    def register_eventfd(self, fd: int) -> None:
        """The kernel signals *fd* when it posts a completion."""
        ...

    # Lifetime.
    def cancel_all(self) -> int:
        """Ask the kernel to cancel every entry in flight."""
        ...

    def take_late(self) -> tuple[int, int, bytes | None] | None:
        """``(fd, result, bytes or None)`` of the call an exception interrupted, once the kernel answered."""
        ...

    def closing(self, deadline_s: float) -> None:
        """Take no new calls; one still waiting after monotonic *deadline_s* is cancelled."""
        ...

    def close(self) -> bool:
        """Release the ring (False, nothing done, while entries are in flight)."""
        ...

    def forget(self) -> None:
        """In a forked child: drop the parent's ring without touching it."""
        ...

    @property
    def fileno(self) -> int:
        """The io_uring descriptor (-1 once closed)."""
        ...

    @property
    def dead(self) -> bool:
        """True once the lane takes nothing more."""
        ...

    @property
    def inflight(self) -> int:
        """Entries not yet answered."""
        ...

    @property
    def queued(self) -> int:
        """Entries written, not yet submitted."""
        ...

    @property
    def unfinished(self) -> bool:
        """The last turn ended at its budget with completions possibly still waiting: run another soon."""
        ...

    @property
    def entries(self) -> int:
        """Entries the lane ran."""
        ...

    @property
    def mine(self) -> bool:
        """True on the thread that owns the lane."""
        ...


class LaneBuilder(Protocol):
    """Builds lanes on one backend's kernel features."""

    @property
    def calls(self) -> frozenset[int]:
        """The syscall numbers a lane can carry (the host passes those the router sends to io_uring)."""
        ...

    def waiter(self, loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
        """What makes the futures of *loop*'s lane entries (``lane.start*``): each has the part of
        ``asyncio.Future`` a task, the front end and ``asyncio.gather`` use, and a turn that resolves it
        wakes its task at the turn's end, in the task's context, rather than through ``loop.call_soon``.

        Started as one entry (``start``, ``start_read``, ``start_write``, ``start_sqe``), a waiter settles
        its own cancellation: ``cancel()`` asks the kernel to cancel the entry and the waiter stays pending
        until the kernel answers (at most the lane's *settle_s*); a failure ends it cancelled, a value that
        won the race is delivered and the task taking it uncancelled. It is a coroutine too (``send``,
        ``throw``, ``close``), so the front end returns it as the operation itself."""
        ...

    def build(self, routes: Iterable[int], *, entries: int, slots: int, settle_s: float) -> Lane:
        """A lane owned by the calling thread, taking the syscalls *routes* (``OSError``: no ring here).

        *entries*: SQ entries (the batch one turn submits at most); *slots*:
        entries in flight at once; *settle_s*: how long an interrupted call
        waits for the kernel's answer to its cancellation.
        """
        ...


@runtime_checkable
class OwnRings(Protocol):
    """An io backend whose operations may also run on per-thread rings."""

    def lane_builder(self) -> LaneBuilder | None:
        """What builds this backend's lanes, or ``None`` when every operation must use the shared ring."""
        ...
