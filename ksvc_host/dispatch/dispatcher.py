"""The dispatcher: a turn, a wake-up and the driver that runs the turns, assembled once.

Built by :func:`ksvc_host.instance.build_instance` with the driver the
``dispatcher`` option names; front ends see it as a
:class:`~ksvc_host.dispatch.port.DispatcherPort`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ksvc_host.abi import layout as L
from ksvc_host.channel.base import Channel
from ksvc_host.dispatch.drivers import Driver, InlineDriver, ThreadDriver
from ksvc_host.dispatch.port import DispatcherListener, InlineDriving
from ksvc_host.dispatch.turn import Turn
from ksvc_host.dispatch.wakeup import Wakeup
from ksvc_host.traits import CompletionSink, IoBackend, QuietIoBackend, SyscallRouter, WorkerPool

MODES = ("thread", "inline")
"""The values of the ``dispatcher`` option."""


class Dispatcher:
    """Drains the submit ring and routes entries to the tiers; implements :class:`DispatcherPort`."""

    def __init__(
        self,
        *,
        channel: Channel,
        router: SyscallRouter,
        io_backend: IoBackend,
        worker_pool: WorkerPool,
        sink: CompletionSink,
        mode: str = "thread",
        on_batch: Callable[[int], None] | None = None,
        batch_size: int = L.MAX_BATCH,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"dispatcher must be 'thread' or 'inline', got {mode!r}")
        self.io_backend = io_backend
        self.wakeup = Wakeup()
        io_backend.set_wakeup_fd(self.wakeup.fileno())
        worker_pool.set_wakeup(self.wakeup.ring)
        self.turn = Turn(
            channel=channel, router=router, io_backend=io_backend, worker_pool=worker_pool, sink=sink,
            on_batch=on_batch, batch_size=batch_size,
        )  # fmt: skip
        self.quiet: QuietIoBackend | None = io_backend if isinstance(io_backend, QuietIoBackend) else None
        """The backend's completion wake-ups can be muted (the thread driver mutes them while it runs turns)."""
        self.failure: BaseException | None = None
        self._listener: DispatcherListener | None = None
        self.driver: Driver
        if mode == "thread":
            self.driver = ThreadDriver(self.turn, self.wakeup, fail=self.fail, quiet=self.quiet)
        else:
            self.driver = InlineDriver(self.turn, self.wakeup, fail=self.fail)

    @property
    def mode(self) -> str:
        """``"thread"`` or ``"inline"``: the driver's name (the ``dispatcher`` option)."""
        return self.driver.name

    # The front end's port ------------------------------------------------------------

    @property
    def inline_driver(self) -> InlineDriving | None:
        """The inline driver when callers run the turns; ``None`` with the thread driver."""
        return self.driver if isinstance(self.driver, InlineDriver) else None

    def wake(self) -> None:
        """Tell the driver there is work; costs a syscall only if it sleeps."""
        self.wakeup.ring()

    def request_cancel(self, corr_id: int) -> None:
        """Ask for the entry *corr_id* to be cancelled (thread-safe, best effort).

        An io_uring operation gets ASYNC_CANCEL; one on a worker runs to its
        end. Either way the entry still gets exactly one completion.
        """
        self.turn.cancel(corr_id)
        self.wakeup.ring()

    def room_freed(self) -> None:
        """The consumer took completions: wake the driver if completions wait for room in the sink."""
        if self.turn.has_overflow:
            self.wakeup.ring()

    def kept_by_kernel(self, corr_id: int) -> bool:
        """Completed with -ECANCELED at shutdown while a worker was still inside its syscall."""
        return corr_id in self.turn.still_in_kernel

    def abandoned(self) -> list[tuple[int, int, int]]:
        """Completions that never fit in the sink (returned to the caller after a stop)."""
        return self.turn.take_overflow()

    def listen(self, listener: DispatcherListener) -> None:
        """Have *listener* told of a failure before pending entries complete with -EIO."""
        self._listener = listener

    # Lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the driver (the thread driver's thread; nothing for the inline one)."""
        self.driver.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Complete everything submitted, then stop.

        Work still running after *timeout* seconds is cancelled (io_uring)
        or completed with ``-ECANCELED`` (workers that never return), so
        every entry still gets exactly one completion.
        """
        self.driver.stop(timeout)

    def fail(self, exc: BaseException) -> None:
        """Fail the dispatcher: *exc* is what broke; every pending entry completes with -EIO."""
        if self.failure is not None:
            return  # failed already: everything pending was completed then
        self.failure = exc
        # Tell the front end first, so its waiters fail with the dispatcher's error rather
        # than a bare EIO; then complete everything through the ring for raw consumers.
        try:
            if self._listener is not None:
                self._listener.dispatcher_failed(exc)
        finally:
            self.turn.abandon(-errno.EIO)

    def close(self) -> None:
        """Release the wake-up eventfd (after :meth:`stop`)."""
        self.wakeup.close()

    # Observation (statistics, tests, diagnostics) ---------------------------------------

    def fileno(self) -> int:
        """The wake-up eventfd."""
        return self.wakeup.fileno()

    @property
    def has_overflow(self) -> bool:
        """True while completions wait for room in the sink."""
        return self.turn.has_overflow

    def idle(self) -> bool:
        """Nothing in flight, held, overflowing or waiting in the submit ring."""
        return self.turn.idle()

    @property
    def entries_processed(self) -> int:
        """Entries completed so far."""
        return self.turn.entries_processed

    @property
    def batches_processed(self) -> int:
        """Turns that took entries so far."""
        return self.turn.batches_processed

    @property
    def express_entries(self) -> int:
        """Entries the express lane took (0 without one)."""
        return self.turn.express_entries
