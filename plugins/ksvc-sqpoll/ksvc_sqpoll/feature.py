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


class SqpollFeature:
    """Adds IORING_SETUP_SQPOLL (and SQ_AFF when a CPU is given) to the ring's set-up."""

    name = "sqpoll"

    def __init__(self, idle_ms: int = 1000, cpu: int | None = None) -> None:
        if idle_ms < 0:
            raise ValueError(f"sq_idle_ms must be >= 0, got {idle_ms}")
        self.idle_ms = idle_ms
        self.cpu = cpu

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
