"""The dispatcher's wake-up: one eventfd that io_uring, the workers and submitters write.

io_uring writes it as its registered eventfd, the workers and submitters
through :meth:`Wakeup.ring`. A driver sleeps on it (:meth:`Wakeup.wait`);
an event loop that runs the turns itself watches :meth:`Wakeup.fileno`.
"""

from __future__ import annotations

import os
import select

from ksvc_host import forksafety


class Wakeup:
    """The eventfd, and whether writing it is needed (no syscall while the thread that would read it is busy)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._guard = forksafety.close_in_child(self._fd)  # a forked child must not ring it
        forksafety.register(self)
        self.pending = False
        """Work was announced since the last turn began (the driver clears it as a turn starts)."""
        self.armed = True
        """A wake-up writes the eventfd: someone may sleep on it. The thread driver disarms it while its
        thread runs turns (it will look again before sleeping); with callers running the turns it stays
        armed, since any of them may be asleep."""

    def ring(self) -> None:
        """There is work; costs a syscall only while armed."""
        self.pending = True
        if self.armed:
            self.write()

    def write(self) -> None:
        """Write the eventfd whatever the state (a sleeper must wake now)."""
        try:
            os.eventfd_write(self._fd, 1)
        except BlockingIOError:  # counter saturated: it is awake anyway
            pass
        except OSError:
            pass  # closed during shutdown

    def wait(self, timeout: float | None) -> None:
        """Sleep until rung or *timeout* seconds pass (at once when a wake-up is pending)."""
        if self.pending:
            return
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        poller = select.poll()  # one per call: a closing thread may wait while a caller does
        poller.register(self._fd, select.POLLIN)
        if poller.poll(ms):
            self.clear()

    def clear(self) -> None:
        """Consume a written wake-up without blocking."""
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def fileno(self) -> int:
        """The eventfd (readable when rung)."""
        return self._fd

    def drop_after_fork(self) -> None:
        """In a forked child: the eventfd was closed there; this copy never writes it."""
        self._fd = -1

    def close(self) -> None:
        """Release the eventfd (once nothing runs turns any more)."""
        self._guard.release()
        forksafety.unregister(self)
        try:
            os.close(self._fd)
        except OSError:
            pass
