"""What a front end may call on the dispatcher, and what the dispatcher tells it back.

A front end (:mod:`ksvc_host.frontend.core` and those built on it) holds
the dispatcher as a :class:`DispatcherPort`, nothing wider:

* :meth:`~DispatcherPort.wake` after publishing submit entries (a turn must run);
* :meth:`~DispatcherPort.request_cancel` to cancel one entry, best effort;
* :meth:`~DispatcherPort.room_freed` after reaping completions (completions
  the sink had no room for can now go out);
* :attr:`~DispatcherPort.inline_driver` (``None`` with the thread driver):
  when the callers run the turns, how they run one, wait for work, or
  watch the wake-up eventfd from an event loop (:class:`InlineDriving`);
* :meth:`~DispatcherPort.kept_by_kernel` and :meth:`~DispatcherPort.abandoned`
  for what a shutdown left: memory a syscall may still use, completions
  that never fit in the sink;
* :meth:`~DispatcherPort.listen` to be told of a failure
  (:class:`DispatcherListener`), before every pending entry completes with
  ``-EIO``.
"""

from __future__ import annotations

from typing import Protocol


class DispatcherListener(Protocol):
    """Told once when the dispatcher fails (on whichever thread ran the failing turn)."""

    def dispatcher_failed(self, exc: BaseException) -> None:
        """*exc* broke the dispatcher; pending entries complete with ``-EIO`` right after this returns."""
        ...


class InlineDriving(Protocol):
    """How callers run the turns of the inline driver (:class:`ksvc_host.dispatch.drivers.InlineDriver`)."""

    def run_turn(self) -> bool:
        """One turn on this thread, True when anything moved; a failing component fails the dispatcher and raises."""
        ...

    def wait(self, timeout: float | None) -> None:
        """Sleep until there is work or *timeout* seconds pass."""
        ...

    def wait_timeout(self) -> float | None:
        """How long an idle caller may sleep: ``None`` until woken, else the interval to retry after."""
        ...

    def fileno(self) -> int:
        """A descriptor readable when a turn has work (an event loop's reader)."""
        ...

    def clear_wakeup(self) -> None:
        """Consume the readable state of :meth:`fileno` without blocking."""
        ...


class DispatcherPort(Protocol):
    """The dispatcher as a front end sees it (see the module doc)."""

    @property
    def inline_driver(self) -> InlineDriving | None:
        """The inline driver when callers run the turns; ``None`` when the dispatcher's thread does."""
        ...

    def wake(self) -> None:
        """There is work: a turn must run (costs a syscall only if the driver sleeps)."""
        ...

    def request_cancel(self, corr_id: int) -> None:
        """Cancel the entry *corr_id*, best effort; it still gets exactly one completion (thread-safe)."""
        ...

    def room_freed(self) -> None:
        """The consumer took completions: wake the dispatcher if it holds some for a full sink."""
        ...

    def kept_by_kernel(self, corr_id: int) -> bool:
        """Whether *corr_id* was completed at shutdown while a worker may still use its memory (keep it)."""
        ...

    def abandoned(self) -> list[tuple[int, int, int]]:
        """After a stop: ``(corr_id, result, flags)`` of completions that never fit in the sink."""
        ...

    def listen(self, listener: DispatcherListener) -> None:
        """Have *listener* told of a failure (one listener: a later one replaces it)."""
        ...
