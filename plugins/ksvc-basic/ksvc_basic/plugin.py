"""ksvc-basic's hook implementations: the default, safe implementation of every trait."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _probe_router(ctx: BuildContext) -> Any:
    from ksvc_basic.routers import ProbeRouter

    return ProbeRouter(ctx.probe_opcodes())


def _static_router(ctx: BuildContext) -> Any:
    from ksvc_basic.routers import StaticRouter

    return StaticRouter(ctx.option("kernel", "newest"))


def _basic_io(ctx: BuildContext) -> Any:
    from ksvc_basic.composite import build_io_uring

    return build_io_uring(ctx)


def _fixed_pool(ctx: BuildContext) -> Any:
    from ksvc_basic.worker_pools import FixedPool

    return FixedPool(workers=ctx.option("workers"), queue_size=ctx.option("worker_queue", 4096), allowed=ctx.allowed)


def _inline_pool(ctx: BuildContext) -> Any:
    from ksvc_basic.worker_pools import InlinePool

    return InlinePool(allowed=ctx.allowed)


def _eventfd(ctx: BuildContext) -> Any:
    from ksvc_basic.eventfd_notifier import EventFdNotifier

    return EventFdNotifier()


def _ring_sink(ctx: BuildContext) -> Any:
    from ksvc_basic.ring_sink import RingCompletionSink

    assert ctx.notifier is not None
    return RingCompletionSink(ctx.channel.completion_ring, ctx.notifier)


def _heap(ctx: BuildContext) -> Any:
    from ksvc_basic.heap_buffers import HeapBuffers

    return HeapBuffers()


def _mmap_page(ctx: BuildContext) -> Any:
    from ksvc_basic.mmap_shared_page import MmapSharedPage

    return MmapSharedPage(ctx.channel)


def _cached_page(ctx: BuildContext) -> Any:
    from ksvc_basic.cached_shared_page import CachedSharedPage

    return CachedSharedPage(ctx.channel)


@hookimpl
def ksvc_register_router(register: Any) -> None:
    """``probe`` (default) and ``static``."""
    register("probe", _probe_router, description="routes by the opcodes the running kernel reports")
    register("static", _static_router, description="routes by a named kernel's opcode table (option 'kernel')")


@hookimpl
def ksvc_register_io_backend(register: Any) -> None:
    """``basic``: io_uring_enter, no fixed files or buffers."""
    register("basic", _basic_io, description="io_uring via io_uring_enter; combines with io_uring features")


@hookimpl
def ksvc_register_worker_pool(register: Any) -> None:
    """``fixed`` (default) and ``inline``."""
    register("fixed", _fixed_pool, description="N = min(8, nproc/2) threads from the start (option 'workers')")
    register("inline", _inline_pool, description="runs each call synchronously in the dispatcher; tests only")


@hookimpl
def ksvc_register_notifier(register: Any) -> None:
    """``eventfd``."""
    register("eventfd", _eventfd, description="eventfd write; pollable from epoll and asyncio")


@hookimpl
def ksvc_register_completion_sink(register: Any) -> None:
    """``ring``."""
    register("ring", _ring_sink, description="completion ring + one notify per batch")


@hookimpl
def ksvc_register_buffer_provider(register: Any) -> None:
    """``heap``."""
    register("heap", _heap, description="fresh memory per operation")


@hookimpl
def ksvc_register_shared_page(register: Any) -> None:
    """``mmap`` (default) and ``cached``."""
    register("mmap", _mmap_page, description="reads the mapped shared page on every access")
    register("cached", _cached_page, description="pid/tgid as attributes, renewed after fork; the rest from the page")
