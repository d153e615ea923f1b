"""KSVC for Python: system calls as ring entries, served by the cheapest tier that can.

Open an instance with :func:`open` (blocking) or :func:`open_async`
(asyncio), selecting an implementation per trait by name; names you omit
come from the environment (``KSVC_IO_BACKEND=...``), the preset, or the
defaults of ``ksvc-basic``::

    import ksvc_host as ksvc

    with ksvc.open(worker_pool="fixed") as k:
        fd = k.openat(ksvc.AT_FDCWD, b"/etc/hostname", os.O_RDONLY)
        data = k.pread(fd, 4096, 0)
"""

from __future__ import annotations

import asyncio
from typing import Any

from ksvc_host.abi.linux import AT_FDCWD
from ksvc_host.errors import (
    ChannelFull,
    ClosedError,
    DispatcherFailed,
    KsvcError,
    NotOffloaded,
    PluginError,
    RefusedSyscall,
    RingCorrupted,
    SelectionError,
)
from ksvc_host.frontend.aio import AsyncKsvc
from ksvc_host.frontend.blocking import Batch, Ksvc
from ksvc_host.hookspecs import hookimpl
from ksvc_host.instance import BuildContext, Instance, build_instance
from ksvc_host.plugins import PluginManager, get_plugin_manager
from ksvc_host.traits import Tier

__version__ = "0.1.0"


def open(**selection: Any) -> Ksvc:  # noqa: A001 - the natural name, as in io.open
    """Build an instance and return its blocking front end (a context manager).

    Keywords: one per trait (``router``, ``io_backend``, ``worker_pool``,
    ``notifier``, ``completion_sink``, ``buffer_provider``,
    ``shared_page``), ``preset`` (``"default"``, ``"server"``), and host
    options ``submit_entries``, ``complete_entries``, ``dispatcher``
    (``"thread"`` or ``"inline"``), ``device``, ``lanes`` (``False``: every
    call goes through the shared channel and the dispatcher, none through
    a thread's own lane) and ``options`` (a dict passed to plugin
    factories, e.g. ``{"workers": 4}``).
    """
    return Ksvc(build_instance(**selection))


class _AsyncOpener:
    """``async with ksvc.open_async(...) as k`` (or ``k = await ksvc.open_async(...)``)."""

    def __init__(self, selection: dict[str, Any]) -> None:
        self._selection = selection
        self._k: AsyncKsvc | None = None

    async def _open(self) -> AsyncKsvc:
        loop = asyncio.get_running_loop()
        instance = await loop.run_in_executor(None, lambda: build_instance(**self._selection))
        self._k = AsyncKsvc(instance, loop)
        return self._k

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncKsvc:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._k is not None:
            await self._k.aclose()


def open_async(**selection: Any) -> _AsyncOpener:
    """Like :func:`open`, for asyncio: ``async with ksvc.open_async() as k: await k.pread(...)``."""
    return _AsyncOpener(selection)


# Networking needs open_async above.
from ksvc_host.net import create_connection, create_server, open_connection, start_server  # noqa: E402

__all__ = [
    "AT_FDCWD",
    "AsyncKsvc",
    "Batch",
    "BuildContext",
    "ChannelFull",
    "ClosedError",
    "DispatcherFailed",
    "Instance",
    "Ksvc",
    "KsvcError",
    "NotOffloaded",
    "PluginError",
    "PluginManager",
    "RefusedSyscall",
    "RingCorrupted",
    "SelectionError",
    "Tier",
    "build_instance",
    "create_connection",
    "create_server",
    "get_plugin_manager",
    "hookimpl",
    "open",
    "open_async",
    "open_connection",
    "start_server",
]
