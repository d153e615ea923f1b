"""Errors the host raises. Each message names what is wrong and how to fix it."""

from __future__ import annotations


class KsvcError(Exception):
    """Base class of every KSVC error that is not an ``OSError`` from a syscall."""


class PluginError(KsvcError):
    """A plugin could not be loaded or registered something invalid."""


class SelectionError(KsvcError, ValueError):
    """An implementation name, preset or option does not resolve."""


class ClosedError(KsvcError, ValueError):
    """The instance is closed (or belongs to another process after ``fork()``)."""


class ChannelFull(BlockingIOError):
    """The submit ring has no room (raw API); retry after reaping completions."""


class RefusedSyscall(PermissionError):
    """A process-altering syscall was submitted; KSVC never executes those."""


class NotOffloaded(OSError):
    """A syscall KSVC does not offload (Tier 3); make it directly."""


class DispatcherFailed(KsvcError, RuntimeError):
    """The dispatcher stopped on an internal error; pending operations were failed."""


from ksvc_host.channel.ring import RingCorrupted  # noqa: E402  (re-exported: a channel error users meet)

__all__ = [
    "ChannelFull",
    "ClosedError",
    "DispatcherFailed",
    "KsvcError",
    "NotOffloaded",
    "PluginError",
    "RefusedSyscall",
    "RingCorrupted",
    "SelectionError",
]
