"""The ``sqpoll`` feature: IORING_SETUP_SQPOLL with a configurable idle time and CPU.

With SQPOLL the kernel's poller thread consumes SQEs as soon as the tail
moves; the ring (``ksvc_basic.uring.IoUring``) then calls io_uring_enter
only when the SQ ring says NEED_WAKEUP (the poller slept after
``idle_ms`` without work). Combines with the other features:
``io_backend="sqpoll+fixed-files"``.
"""

from __future__ import annotations

from typing import Any

from ksvc_host.abi.io_uring import SetupFlag

INLINE_BACKLOG = 0
"""Default ``sq_inline_backlog``: SQEs the poller may have unconsumed before file reads and writes
run on the submitting thread instead (a second, plain ring)."""


class SqpollFeature:
    """Adds IORING_SETUP_SQPOLL (and SQ_AFF when a CPU is given) to the ring's set-up."""

    name = "sqpoll"

    def __init__(self, idle_ms: int = 1000, cpu: int | None = None, inline_backlog: int = INLINE_BACKLOG) -> None:
        if idle_ms < 0:
            raise ValueError(f"sq_idle_ms must be >= 0, got {idle_ms}")
        if isinstance(inline_backlog, bool) or not isinstance(inline_backlog, int) or inline_backlog < 0:
            raise ValueError(f"sq_inline_backlog must be an int >= 0 (0: never run inline), got {inline_backlog!r}")
        self.idle_ms = idle_ms
        self.cpu = cpu
        self.inline_backlog = inline_backlog

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
        if self.inline_backlog:
            backend.add_inline_ring(self.inline_backlog)
