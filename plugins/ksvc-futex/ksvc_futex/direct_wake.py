"""DirectWakeSink: each result goes straight to the caller waiting for it.

The completion ring is skipped: the front end attaches a ``deliver``
function, the sink calls it for every completion (on the dispatcher's
thread), and the front end wakes that one caller through the caller's own
futex. No other caller wakes; no eventfd is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ksvc_futex.futex import FutexEvent


class DirectWakeSink:
    """Completion sink ``direct-wake``."""

    name = "direct-wake"

    def __init__(self) -> None:
        self._deliver: Callable[[int, int, int], None] | None = None
        self._held: list[tuple[int, int, int]] = []
        self.delivered = 0

    def attach(self, deliver: Callable[[int, int, int], None]) -> None:
        """Called once by the front end: where completions go."""
        self._deliver = deliver
        held, self._held = self._held, []
        for item in held:
            deliver(*item)

    @staticmethod
    def make_event() -> FutexEvent:
        """The wake-up object for one waiting caller."""
        return FutexEvent()

    def push(self, corr_id: int, result: int, flags: int = 0) -> bool:
        """Deliver now (or hold until a front end attaches). Never full."""
        if self._deliver is None:
            self._held.append((corr_id, result, flags))
        else:
            self.delivered += 1
            self._deliver(corr_id, result, flags)
        return True

    def push_batch(self, items: Iterable[tuple[int, int, int]]) -> int:
        """Deliver every item."""
        n = 0
        for item in items:
            self.push(*item)
            n += 1
        return n

    def flush_and_notify(self) -> None:
        """Nothing to publish: every result was delivered as it came."""
