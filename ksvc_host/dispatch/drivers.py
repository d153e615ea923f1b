"""Who runs the turns: a driver, chosen once when the instance is built (``dispatcher="thread"`` or ``"inline"``).

:class:`ThreadDriver` runs every turn on a thread of its own, which sleeps
on the wake-up eventfd when a turn moved nothing; it is then the only
thread that ever submits to io_uring. :class:`InlineDriver` runs no
thread: the callers run the turns (the blocking front end's leader while
it waits, the asyncio loop when the eventfd is readable), one at a time,
through :meth:`InlineDriver.run_turn`.

Both stop the same way: begin the turn's drain, run turns until it is
over (docs/design.md §5).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ksvc_host import interrupts
from ksvc_host.abi import layout as L
from ksvc_host.dispatch.turn import Turn
from ksvc_host.dispatch.wakeup import Wakeup
from ksvc_host.traits import QuietIoBackend

_JOIN_GRACE_S = 5.0


class ThreadDriver:
    """Runs the turns on the dispatcher's own thread (``dispatcher="thread"``)."""

    name = "thread"

    def __init__(
        self, turn: Turn, wakeup: Wakeup, *, fail: Callable[[BaseException], None], quiet: QuietIoBackend | None
    ) -> None:
        self._turn = turn
        self._wakeup = wakeup
        self._fail = fail
        self._quiet = quiet
        """Wake-ups muted while the thread runs turns (it reaps itself); ``None``: left on."""
        self._completions_muted = False
        self.thread: threading.Thread | None = None
        turn.worker_state = L.WORKER_STATE_BUSY

    def start(self) -> None:
        """Start the thread."""
        self._wakeup.armed = False  # awake from here on, until the thread goes to sleep
        self.thread = threading.Thread(target=self._main, name="ksvc-dispatcher", daemon=True)
        self.thread.start()

    def _mute_completions(self, mute: bool) -> None:
        """Whether io_uring's completions write the wake-up eventfd.

        Only a sleeping thread needs them: awake, it reaps what completed on
        its next turn, and an eventfd write per batch would wake it for
        nothing (a context switch and a GIL hand-over each time, profiled).
        """
        if self._quiet is not None and self._completions_muted != mute:
            self._quiet.set_completion_wakeups(not mute)
            self._completions_muted = mute

    def _main(self) -> None:
        turn, wakeup, quiet = self._turn, self._wakeup, self._quiet
        try:
            while True:
                self._mute_completions(True)
                wakeup.pending = False
                if turn.run():
                    continue
                if turn.draining and turn.drained():
                    break
                wakeup.armed = True
                self._mute_completions(False)
                ready = quiet is not None and quiet.completions_ready()
                if wakeup.pending or ready or turn.ready_without_wakeup():
                    wakeup.armed = False
                    continue
                wakeup.wait(turn.wait_timeout())
                wakeup.armed = False
        except BaseException as exc:  # noqa: BLE001 - report any failure to the callers
            self._fail(exc)

    def stop(self, timeout: float) -> None:
        """Drain (see :meth:`Turn.drained`) and wait for the thread to end."""
        self._turn.begin_drain(timeout)
        if self.thread is not None:
            self._wakeup.ring()
            self._wakeup.write()
            self.thread.join(timeout + _JOIN_GRACE_S)


class InlineDriver:
    """The callers run the turns (``dispatcher="inline"``): the :class:`~ksvc_host.dispatch.port.InlineDriving`."""

    name = "inline"

    def __init__(self, turn: Turn, wakeup: Wakeup, *, fail: Callable[[BaseException], None]) -> None:
        self._turn = turn
        self._wakeup = wakeup
        self._fail = fail
        self._lock = threading.Lock()
        """Held while a turn runs: one caller at a time."""
        if turn.express is not None:
            # By construction, not by a rule per turn: the plain ring beside an SQ thread is submitted by
            # whoever runs the turn, and any caller's thread may exit before its requests end. Only the
            # thread driver, whose one thread runs every turn, uses it.
            turn.express.forgo_assist_ring()

    def start(self) -> None:
        """Nothing to start: turns run when callers run them."""

    def run_turn(self) -> bool:
        """One turn on the calling thread (Ctrl-C held back until it ends); True when anything moved.

        A component that fails here fails the dispatcher, as on the thread
        driver's thread; the exception is then raised to the caller.
        """
        try:
            with interrupts.deferred(), self._lock:
                self._wakeup.pending = False
                return self._turn.run()
        except Exception as exc:  # noqa: BLE001 - a broken component: fail everything pending
            self._fail(exc)
            raise

    def wait(self, timeout: float | None) -> None:
        """Sleep until there is work or *timeout* seconds pass."""
        self._wakeup.wait(timeout)

    def wait_timeout(self) -> float | None:
        """How long an idle caller may sleep before the next turn: ``None`` until woken, else a retry interval."""
        return self._turn.wait_timeout()

    def fileno(self) -> int:
        """The wake-up eventfd: readable when a turn has work (for an event loop's reader)."""
        return self._wakeup.fileno()

    def clear_wakeup(self) -> None:
        """Consume a wake-up without blocking (an event loop, before it runs turns)."""
        self._wakeup.clear()

    def stop(self, timeout: float) -> None:
        """Run the drain's turns on the closing thread until it is over."""
        turn, wakeup = self._turn, self._wakeup
        turn.begin_drain(timeout)
        try:
            while not turn.drained():
                with self._lock:
                    wakeup.pending = False
                    moved = turn.run()
                if not moved:
                    wakeup.wait(turn.wait_timeout())
        except Exception as exc:  # a broken component or ring: fail what is pending, and stop
            self._fail(exc)


Driver = ThreadDriver | InlineDriver
DRIVERS: dict[str, type[ThreadDriver] | type[InlineDriver]] = {"thread": ThreadDriver, "inline": InlineDriver}
"""The drivers by the name the ``dispatcher`` option gives."""
