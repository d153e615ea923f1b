"""ksvc-basic's implementations run the host's conformance kit."""

from __future__ import annotations

import pytest
from ksvc_basic.basic_iouring import BasicIoUring
from ksvc_basic.eventfd_notifier import EventFdNotifier
from ksvc_basic.heap_buffers import HeapBuffers
from ksvc_basic.mmap_shared_page import MmapSharedPage
from ksvc_basic.ring_sink import RingCompletionSink
from ksvc_basic.routers import ProbeRouter, StaticRouter
from ksvc_basic.worker_pools import FixedPool, InlinePool

from ksvc_host import testing
from ksvc_host.abi.io_uring import STATIC_KERNELS


def test_probe_router() -> None:
    be = BasicIoUring(4)
    try:
        testing.check_router(lambda: ProbeRouter(be.probe_opcodes()))
    finally:
        be.shutdown()


@pytest.mark.parametrize("kernel", STATIC_KERNELS)
def test_static_router(kernel: str) -> None:
    testing.check_router(lambda: StaticRouter(kernel))


def test_basic_io_backend() -> None:
    testing.check_io_backend(lambda: BasicIoUring(16))


@pytest.mark.parametrize("cls", [FixedPool, InlinePool])
def test_worker_pools(cls: type) -> None:
    testing.check_worker_pool(lambda allowed: cls(workers=2, queue_size=64, allowed=allowed))


def test_eventfd_notifier() -> None:
    testing.check_notifier(EventFdNotifier)


def test_ring_sink() -> None:
    testing.check_completion_sink(lambda ch, n: RingCompletionSink(ch.completion_ring, n), EventFdNotifier)


def test_heap_buffers() -> None:
    testing.check_buffer_provider(HeapBuffers)


def test_mmap_shared_page() -> None:
    testing.check_shared_page(MmapSharedPage)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
@pytest.mark.parametrize("worker_pool", ["fixed", "inline"])
def test_default_stack(dispatcher: str, worker_pool: str) -> None:
    testing.check_instance(dispatcher=dispatcher, worker_pool=worker_pool)
