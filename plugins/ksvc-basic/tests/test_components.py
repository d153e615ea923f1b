"""Worker pools, the eventfd notifier, the ring sink, heap buffers and the mmap page: real threads and fds."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import threading
import time

import pytest
from ksvc_basic.eventfd_notifier import EventFdNotifier
from ksvc_basic.heap_buffers import HeapBuffers
from ksvc_basic.mmap_shared_page import MmapSharedPage
from ksvc_basic.ring_sink import RingCompletionSink
from ksvc_basic.worker_pools import INTERRUPT_SIGNAL, FixedPool, InlinePool, default_workers

from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.channel import open_channel
from ksvc_host.traits import CancellableWorkerPool

NR = SYSCALLS


def _drain(pool: FixedPool | InlinePool, n: int, timeout: float = 5.0) -> dict[int, int]:
    out: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for token, res in pool.poll_completions(1000):
            assert token not in out, "completed twice"
            out[token] = res
        time.sleep(0.001)
    return out


@pytest.mark.parametrize("cls", [FixedPool, InlinePool])
def test_pool_runs_real_syscalls(cls: type) -> None:
    pool = cls(workers=2)
    r, w = os.pipe()
    os.write(w, b"hello")
    buf = native.alloc(16)
    assert pool.enqueue(1, NR["getpid"], (0,) * 6)
    assert pool.enqueue(2, NR["read"], (r, native.address_of(buf), 16, 0, 0, 0))
    assert pool.enqueue(3, NR["close"], (99999, 0, 0, 0, 0, 0))
    got = _drain(pool, 3)
    assert got == {1: os.getpid(), 2: 5, 3: -errno.EBADF}
    assert bytes(native.ffi.buffer(buf, 5)) == b"hello"
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.enqueue(4, NR["getpid"], (0,) * 6)
    os.close(r)
    os.close(w)


def test_blocked_workers_do_not_block_the_rest() -> None:
    pool = FixedPool(workers=3)
    pipes = [os.pipe() for _ in range(2)]
    bufs = [native.alloc(8) for _ in pipes]
    for i, (r, _) in enumerate(pipes):
        pool.enqueue(100 + i, NR["read"], (r, native.address_of(bufs[i]), 8, 0, 0, 0))
    time.sleep(0.05)
    assert pool.busy == 2
    pool.enqueue(1, NR["getppid"], (0,) * 6)
    assert _drain(pool, 1, 2.0) == {1: os.getppid()}
    for _, w in pipes:
        os.write(w, b"x")
    assert set(_drain(pool, 2)) == {100, 101}
    pool.shutdown()
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_full_queue_refuses_and_loses_nothing() -> None:
    r, w = os.pipe()
    pool = FixedPool(workers=1, queue_size=4)
    buf = native.alloc(1)
    pool.enqueue(0, NR["read"], (r, native.address_of(buf), 1, 0, 0, 0))  # occupies the only worker
    time.sleep(0.05)
    accepted = [t for t in range(1, 20) if pool.enqueue(t, NR["getpid"], (0,) * 6)]
    assert accepted == [1, 2, 3, 4]
    os.write(w, b"x")
    got = _drain(pool, 5)
    assert sorted(got) == [0, 1, 2, 3, 4] and pool.pending() == 0
    pool.shutdown()
    os.close(r)
    os.close(w)


def test_disallowed_never_executes_and_executor_errors_are_eio() -> None:
    ran: list[int] = []

    def executor(nr: int, args: tuple[int, ...]) -> int:
        ran.append(nr)
        if nr == NR["getppid"]:
            raise RuntimeError("boom")
        return 0

    pool = FixedPool(workers=1, allowed=lambda nr: nr != NR["getpid"], executor=executor)
    pool.enqueue(1, NR["getpid"], (0,) * 6)
    pool.enqueue(2, NR["getppid"], (0,) * 6)
    pool.enqueue(3, NR["getuid"], (0,) * 6)
    assert _drain(pool, 3) == {1: -errno.EPERM, 2: -errno.EIO, 3: 0}
    assert NR["getpid"] not in ran
    pool.shutdown()


def test_wakeup_called_and_shutdown_drains_and_joins() -> None:
    calls = []
    pool = FixedPool(workers=2)
    pool.set_wakeup(lambda: calls.append(1))
    for t in range(50):
        pool.enqueue(t, NR["getpid"], (0,) * 6)
    pool.shutdown(wait=True)
    assert len(_drain(pool, 50)) == 50 and len(calls) == 50
    assert pool.total == 0  # every worker thread joined
    assert 1 <= default_workers() <= 8


def test_eventfd_notify_wait_and_coalescing() -> None:
    n = EventFdNotifier()
    n.notify()
    assert n.wait(0) is True
    t0 = time.monotonic()
    assert n.wait(0.05) is False and time.monotonic() - t0 >= 0.045
    for _ in range(1000):
        n.notify()
    assert n.count <= 2  # coalesced: one write, not a thousand
    assert n.wait(0) is True and n.wait(0) is False
    threading.Timer(0.05, n.notify).start()
    assert n.wait(2.0) is True
    n.notify()
    p = select.poll()
    p.register(n.fileno(), select.POLLIN)
    assert p.poll(0)
    n.close()
    n.close()
    with pytest.raises(ValueError, match="closed"):
        n.notify()


def test_eventfd_wakes_asyncio() -> None:
    n = EventFdNotifier()

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        loop.add_reader(n.fileno(), lambda: (n.clear(), fired.set()))
        threading.Timer(0.02, n.notify).start()
        await asyncio.wait_for(fired.wait(), 2)
        loop.remove_reader(n.fileno())
        return True

    assert asyncio.run(main())
    n.close()


def test_ring_sink_batches_one_notify_and_back_pressure() -> None:
    ch = open_channel(16, 16, device="")
    n = EventFdNotifier()
    sink = RingCompletionSink(ch.completion_ring, n)
    assert sink.push_batch([(i, -i, 0) for i in range(20)]) == 16  # full at 16
    assert not sink.push(99, 0)
    assert ch.completion_ring.used() == 0  # nothing visible before the flush
    sink.flush_and_notify()
    sink.flush_and_notify()  # nothing new: no second notification
    assert ch.completion_ring.used() == 16 and sink.notifications == 1 and n.count == 1
    entry = L.COMPLETION_ENTRY.unpack_from(ch.completion_ring.buf, ch.completion_ring.slot_offset(3))
    assert entry[:3] == (3, -3, 0)
    n.close()
    ch.close()


def test_ring_sink_quiet_publish_is_notified_at_the_next_flush() -> None:
    ch = open_channel(16, 16, device="")
    n = EventFdNotifier()
    sink = RingCompletionSink(ch.completion_ring, n)
    sink.push(1, 10)
    sink.publish_quietly()  # visible at once, no wake-up: the caller that ran the turn reaps it
    assert ch.completion_ring.used() == 1 and n.count == 0 and sink.notifications == 0
    sink.flush_and_notify()  # nothing new, but a sleeper must still learn of the quiet entry
    assert n.count == 1 and sink.notifications == 1
    sink.flush_and_notify()
    assert n.count == 1  # and only once
    n.close()
    ch.close()


def test_heap_buffers() -> None:
    h = HeapBuffers(max_size=1 << 20)
    a, b = h.acquire(100), h.acquire(100)
    assert a is not None and b is not None and h.in_use == 2
    a.view()[:5] = b"hello"
    b.view()[:5] = b"world"
    assert bytes(a.view(5)) == b"hello" and bytes(b.view(5)) == b"world"
    h.release(a)
    with pytest.raises(ValueError, match="already released"):
        h.release(a)
    assert h.acquire(2 << 20) is None and h.in_use == 1 and not h.is_registered and h.pool_size == 0


def test_mmap_page_reads_identity() -> None:
    ch = open_channel(16, 16, device="")
    page = MmapSharedPage(ch)
    assert (page.pid, page.ppid, page.uid, page.euid, page.gid, page.egid) == (
        os.getpid(), os.getppid(), os.getuid(), os.geteuid(), os.getgid(), os.getegid())  # fmt: skip
    assert page.field("machine") == os.uname().machine.encode()
    with pytest.raises(KeyError, match="no shared-page field"):
        page.field("nope")
    ch.close()


def test_cached_page_conforms_and_renews_after_fork() -> None:
    from ksvc_basic.cached_shared_page import CachedSharedPage

    from ksvc_host import testing

    testing.check_shared_page(CachedSharedPage)
    ch = open_channel(16, 16, device="")
    page = CachedSharedPage(ch)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, f"{page.pid} {page.tgid} {os.getpid()}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    a, b, c = os.read(r, 100).split()
    assert a == b == c and int(a) != os.getpid()  # the child's own id, not the parent's from the page
    assert page.pid == os.getpid()
    os.close(r)
    os.close(w)
    ch.close()


def test_credentials_follow_a_change_after_refresh() -> None:
    import ksvc_host as ksvc

    with ksvc.open(shared_page="cached") as k:
        before = os.getegid()
        target = 65534 if before == 0 else before
        os.setegid(target) if os.geteuid() == 0 else None
        try:
            k.refresh()
            assert k.getegid() == os.getegid() == target
        finally:
            if os.geteuid() == 0:
                os.setegid(before)
        k.refresh()
        assert k.getegid() == os.getegid()


def _wait_for(pool: FixedPool, count: int, timeout: float) -> dict[int, int]:
    done: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        done.update(pool.poll_completions())
        time.sleep(0.005)
    return done


def test_cancel_interrupts_a_running_syscall_and_drops_a_queued_one() -> None:
    # One worker inside poll(NULL, 0, 60 s), one job queued behind it: cancel ends both at once.
    pool = FixedPool(workers=1)
    try:
        assert isinstance(pool, CancellableWorkerPool)
        r, w = os.pipe()
        assert pool.enqueue(1, SYSCALLS["poll"], (0, 0, 60_000, 0, 0, 0))
        deadline = time.monotonic() + 2.0
        while not pool.running(1) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert pool.running(1)
        assert pool.enqueue(2, SYSCALLS["write"], (w, 0, 0, 0, 0, 0))  # would run after the poll
        assert pool.cancel(2) and pool.cancel(1)
        t0 = time.monotonic()
        done = _wait_for(pool, 2, 5.0)
        assert done == {1: -errno.ECANCELED, 2: -errno.ECANCELED}
        assert time.monotonic() - t0 < 2.0
        assert not pool.running(1) and not pool.cancel(1)  # finished: nothing left to cancel
        # A signal it was not sent for (another job's) leaves a job running: EINTR is retried.
        assert pool.enqueue(3, SYSCALLS["poll"], (0, 0, 300, 0, 0, 0))
        while not pool.running(3):
            time.sleep(0.001)
        signal.pthread_kill(pool._running[3], INTERRUPT_SIGNAL)
        assert _wait_for(pool, 1, 5.0) == {3: 0}  # poll's timeout, not -EINTR
        os.close(r)
        os.close(w)
    finally:
        pool.shutdown()
