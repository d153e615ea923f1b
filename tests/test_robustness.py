"""Nothing lost, nothing crashes: corrupted rings, signals, shutdown under load, cancellation, buffers kept alive."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import signal
import threading
import time
import weakref

import pytest

import ksvc_host as ksvc
from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS

NR = SYSCALLS


class Buf(bytearray):
    """A buffer that can be weakly referenced, to see when it is freed."""


def test_corrupted_submit_ring_is_detected_and_reported() -> None:
    # Consumer side: a producer publishing a tail far beyond the head.
    k = ksvc.open(dispatcher="inline")
    ring = k.instance.channel.submit_ring
    ring.publish_tail(ring.tail + 10**6)
    with pytest.raises(ksvc.RingCorrupted, match="ring counters out of range"):
        k.instance.dispatcher.turn.run()
    k.close()
    # Producer side: a consumer publishing a head beyond the tail (inline: no dispatcher thread that could
    # see the corruption first and fail the instance instead).
    k = ksvc.open(dispatcher="inline")
    ring = k.instance.channel.submit_ring
    ring.publish_head(ring.head + 10**6)
    with pytest.raises(ksvc.RingCorrupted, match="ring counters out of range"):
        k.fcntl(0, 1)
    k.close()
    with ksvc.open() as fresh:
        assert fresh.getpid() == os.getpid()


def test_corrupted_completion_ring_is_reported_not_followed() -> None:
    k = ksvc.open(dispatcher="inline")
    cring = k.instance.channel.completion_ring
    cring.publish_tail(cring.tail + 5000)
    with pytest.raises(ksvc.RingCorrupted, match="out of range"):
        k.fcntl(0, 1)
    k.close()


def test_double_close_and_use_after_close() -> None:
    k = ksvc.open()
    k.close()
    k.close()
    with pytest.raises(ksvc.ClosedError, match="closed"):
        k.fcntl(0, 1)
    with pytest.raises(ksvc.ClosedError):
        k.raw.submit([(NR["getpid"], (), 0)])


def test_signal_handler_during_a_blocking_wait_is_like_the_stdlib() -> None:
    r, w = os.pipe()
    seen: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda s, f: seen.append(s))
    try:
        with ksvc.open() as k:
            threading.Timer(0.3, lambda: os.write(w, b"late")).start()
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # interrupts the wait repeatedly
            assert k.read(r, 10) == b"late"  # EINTR is retried, as PEP 475 does
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert seen
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    os.close(r)
    os.close(w)


def test_a_raising_signal_handler_cancels_the_operation_in_the_kernel() -> None:
    r, w = os.pipe()

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError("alarm")

    old = signal.signal(signal.SIGALRM, boom)
    try:
        with ksvc.open() as k:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(TimeoutError):
                k.read(r, 10)
            deadline = time.monotonic() + 5
            while k._completer.pending_count() and time.monotonic() < deadline:
                k._completer.reap()
                time.sleep(0.01)
            assert k._completer.pending_count() == 0  # the cancelled read completed in the kernel
            os.write(w, b"data")
            assert k.read(r, 10) == b"data"  # and did not eat what came later
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_shutdown_with_ten_thousand_in_flight(dispatcher: str) -> None:
    k = ksvc.open(dispatcher=dispatcher, submit_entries=4096, complete_entries=4096)
    pipes = [os.pipe() for _ in range(8)]
    bufs = [native.alloc(8) for _ in pipes]
    entries = [(NR["read"], (pipes[i % 8][0], native.address_of(bufs[i % 8]), 8), 0) for i in range(16)]
    entries += [(NR["getppid"] if i % 2 else NR["fcntl"], (0, 1), 0) for i in range(10_000 - 16)]
    ids: list[int] = []
    got: dict[int, int] = {}
    i = 0
    while i < len(entries):
        try:
            ids += k.raw.submit(entries[i : i + 512])
            i += 512
        except ksvc.ChannelFull:
            for c in k.raw.completions(wait_for=1):
                assert c.corr_id not in got
                got[c.corr_id] = c.result
    k.close(timeout=0.5)
    for c in k.raw.completions():
        assert c.corr_id not in got, "a second completion for one entry"
        got[c.corr_id] = c.result
    assert set(got) == set(ids) and len(ids) == 10_000  # every entry completed exactly once
    blocked = [got[c] for c in ids[:16]]
    assert all(r == -errno.ECANCELED for r in blocked)  # the reads nobody fed were cancelled
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_cancelled_task_keeps_its_buffer_alive_until_the_kernel_is_done() -> None:
    async def main() -> None:
        async with ksvc.open_async() as k:
            r, w = os.pipe()
            buf = Buf(64)
            ref = weakref.ref(buf)
            task = asyncio.ensure_future(k.readinto(r, buf))
            del buf  # only the in-flight operation references it now
            await asyncio.sleep(0.05)
            gc.collect()
            assert ref() is not None, "the buffer was freed while the kernel could still write into it"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):
                if k._completer.pending_count() == 0:
                    break
                await asyncio.sleep(0.005)
            gc.collect()
            assert ref() is None, "the buffer outlived the operation"
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_cancellation_racing_completion_loses_nothing() -> None:
    async def main() -> None:
        async with ksvc.open_async() as k:
            r, w = os.pipe()
            rnd = random.Random(7)
            tasks = []
            for i in range(300):
                op = k.fcntl(r, 1) if i % 3 else k.read(r, 1)
                tasks.append(asyncio.ensure_future(op))
                if i % 10 == 0:
                    os.write(w, b"x" * 5)
                if rnd.random() < 0.5:
                    asyncio.get_running_loop().call_later(rnd.random() * 0.01, tasks[-1].cancel)
            await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(x, (int, bytes, asyncio.CancelledError)) for x in results), results[:5]
            for _ in range(400):
                if k._completer.pending_count() == 0:
                    break
                await asyncio.sleep(0.005)
            assert k._completer.pending_count() == 0
            assert await k.fcntl(r, 1) >= 0  # still serving
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_worker_job_raising_base_exception_is_eio_and_the_pool_lives() -> None:
    from ksvc_basic.worker_pools import FixedPool

    def executor(nr: int, args: tuple[int, ...]) -> int:
        if nr == NR["getuid"]:
            raise SystemExit("worker told to exit")
        return 0

    pool = FixedPool(workers=1, executor=executor)
    pool.enqueue(1, NR["getuid"], (0,) * 6)
    pool.enqueue(2, NR["getpid"], (0,) * 6)
    deadline = time.monotonic() + 5
    got: dict[int, int] = {}
    while len(got) < 2 and time.monotonic() < deadline:
        got.update(pool.poll_completions())
        time.sleep(0.005)
    assert got == {1: -errno.EIO, 2: 0} and pool.total == 1
    pool.shutdown()


def test_oversized_and_negative_lengths() -> None:
    with ksvc.open() as k:
        r, w = os.pipe()
        os.write(w, b"abc")
        assert k.read(r, 2**40) == b"abc"  # clamped to the kernel's maximum, as the kernel does
        with pytest.raises(OSError, match="negative") as info:  # as os.read(r, -1): EINVAL
            k.read(r, -1)
        assert info.value.errno == errno.EINVAL
        assert k.raw.submit([(NR["read"], (r, 0, 2**64 - 1), 0)])
        (c,) = k.raw.completions(wait_for=1)
        assert c.result in (-errno.EFAULT, -errno.EINVAL)
        os.close(r)
        os.close(w)
    assert L.MAX_BATCH == 64


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_blocking_callers_wait_for_a_full_submit_ring_and_worker_queue(dispatcher: str) -> None:
    with ksvc.open(dispatcher=dispatcher, submit_entries=16, complete_entries=16,
                   options={"workers": 1, "worker_queue": 2}) as k:  # fmt: skip
        b = k.batch()
        for _ in range(300):  # far more than the ring (16) and the worker queue (2) hold
            b.fcntl(0, 1)
            b.syscall(NR["getppid"])
        out = b.run()
        assert len(out) == 600 and all(isinstance(x, int) and x >= 0 for x in out)
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(100):
                    assert k.fcntl(0, 1) >= 0
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
