"""EventFdNotifier: the default Notifier, an eventfd usable from epoll and asyncio."""

from __future__ import annotations

import os
import select
import time

from ksvc_host import forksafety


class EventFdNotifier:
    """Writes an eventfd to wake the consumer; repeated notifies coalesce.

    A Python-level flag skips the write while a notification is already
    pending. The consumer reads the eventfd *first* and clears the flag
    after, then reaps: a notify skipped in between published its
    completions before notifying, so that reap sees them; a notify after
    the flag is cleared writes again. No wake-up is lost, and none is
    left stuck behind a flag whose write was already consumed.
    """

    name = "eventfd"

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._guard = forksafety.close_in_child(self._fd)  # a forked child must not wake our consumer
        forksafety.register(self)
        self._pending = False
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self.count = 0
        """eventfd writes made (notifications that were not coalesced)."""

    def notify(self) -> None:
        """Wake the consumer; no syscall if a wake-up is already pending."""
        if self._fd < 0:
            raise ValueError("notifier is closed")
        if self._pending:
            return
        self._pending = True
        self.count += 1
        try:
            os.eventfd_write(self._fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the consumer will wake anyway

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified or *timeout* passes; consume the notification."""
        if self._fd < 0:
            raise ValueError("notifier is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            if self._poll.poll(ms):
                self.clear()
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def clear(self) -> None:
        """Consume a pending notification without blocking (then reap: see the class doc)."""
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        self._pending = False

    def fileno(self) -> int:
        """The eventfd."""
        return self._fd

    def drop_after_fork(self) -> None:
        """In a forked child: the eventfd was closed there; this copy is unusable."""
        self._fd = -1

    def close(self) -> None:
        """Close the eventfd. Idempotent."""
        if self._fd >= 0:
            self._guard.release()
            forksafety.unregister(self)
            os.close(self._fd)
            self._fd = -1
