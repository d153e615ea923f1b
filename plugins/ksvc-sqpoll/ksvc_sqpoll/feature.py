"""The ``sqpoll`` feature: IORING_SETUP_SQPOLL with a configurable idle time and CPU.

With SQPOLL the kernel's poller thread consumes SQEs as soon as the tail
moves; the ring (``ksvc_basic.uring.IoUring``) then calls io_uring_enter
only when the SQ ring says NEED_WAKEUP (the poller slept after
``idle_ms`` without work). Combines with the other features:
``io_backend="sqpoll+fixed-files"``.

Beside the poller's ring sits a plain one, the assist ring (``sq_assist``, on by default):
file reads and writes the dispatcher's thread submits go there, and run on
that thread, when the poller's SQ is full, and with ``sq_assist_backlog=N``
whenever the poller has N SQEs unconsumed, so both cores read. (Calls
made on a caller's own lane never reach the poller's ring.)
"""

from __future__ import annotations

from typing import Any

from ksvc_host.abi.io_uring import SetupFlag


class SqpollFeature:
    """Adds IORING_SETUP_SQPOLL (and SQ_AFF when a CPU is given) to the ring's set-up, and the plain ring."""

    name = "sqpoll"

    def __init__(
        self, idle_ms: int = 1000, cpu: int | None = None, assist: bool = True, assist_backlog: int = 0
    ) -> None:
        if idle_ms < 0:
            raise ValueError(f"sq_idle_ms must be >= 0, got {idle_ms}")
        if not isinstance(assist, bool):
            raise ValueError(f"sq_assist must be True or False, got {assist!r}")
        if isinstance(assist_backlog, bool) or not isinstance(assist_backlog, int) or assist_backlog < 0:
            raise ValueError(
                f"sq_assist_backlog must be an int >= 0 (0: only when the poller's SQ is full), got {assist_backlog!r}"
            )
        if assist_backlog and not assist:
            raise ValueError("sq_assist_backlog needs sq_assist=True (the plain ring it sends entries to)")
        self.idle_ms = idle_ms
        self.cpu = cpu
        self.assist = assist
        """Build the plain ring beside the poller's: a stream whose caller waits for the poller reads part itself."""
        self.assist_backlog = assist_backlog
        """Also send file reads and writes there whenever the poller has this many SQEs unconsumed (0: never)."""

    def setup_flags(self, flags: int) -> int:
        """Ask for the kernel poller thread."""
        return flags | SetupFlag.SQPOLL

    def ring_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Idle time before the poller sleeps, and its CPU."""
        out = dict(kwargs, sq_thread_idle_ms=self.idle_ms)
        if self.cpu is not None:
            out["sq_thread_cpu"] = self.cpu
        return out

    def after_setup(self, backend: Any) -> None:
        """Check the kernel really gave us a poller thread."""
        if not backend.ring.flags & SetupFlag.SQPOLL:
            raise OSError(95, "io_uring accepted the ring but without SQPOLL; this kernel cannot poll the SQ")
        if self.assist:
            backend.add_assist_ring(self.assist_backlog)
