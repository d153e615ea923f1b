"""futex notifier and direct-wake sink: contracts, no eventfd writes, asyncio, many threads."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from ksvc_futex.direct_wake import DirectWakeSink
from ksvc_futex.futex import FutexEvent, FutexWord
from ksvc_futex.notifier import FutexNotifier

import ksvc_host as ksvc
from ksvc_host import testing
from ksvc_host.frontend.core import BULK_MAX


def test_notifier_conformance() -> None:
    testing.check_notifier(FutexNotifier)


def test_no_syscall_when_nobody_sleeps() -> None:
    w = FutexWord()
    for _ in range(100):
        w.notify()
    assert w.wake_calls == 0 and w.wait(0) is True
    threading.Timer(0.05, w.notify).start()
    assert w.wait(5) is True and w.wake_calls == 1  # one wake for the one sleeper


def test_event() -> None:
    e = FutexEvent()
    threading.Timer(0.02, e.set).start()
    assert e.wait(5) and e.is_set()


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
@pytest.mark.parametrize("sink", ["ring", "direct-wake"])
def test_stack_with_futex(dispatcher: str, sink: str) -> None:
    testing.check_instance(notifier="futex", completion_sink=sink, dispatcher=dispatcher)


def test_direct_wake_skips_the_ring_and_the_eventfd() -> None:
    with ksvc.open(completion_sink="direct-wake", notifier="eventfd") as k:
        for _ in range(50):
            assert k.getppid() == os.getppid() and k.fcntl(0, 1) >= 0
        sink = k.instance.completion_sink
        assert isinstance(sink, DirectWakeSink) and sink.delivered >= 50
        assert k.instance.channel.completion_ring.tail == 0  # nothing went through the ring
        assert k.instance.notifier.count == 0  # type: ignore[attr-defined]  # the eventfd was never written


def test_futex_notifier_does_not_touch_an_eventfd() -> None:
    with ksvc.open(notifier="futex") as k:
        for _ in range(20):
            k.fcntl(0, 1)
        assert k.instance.notifier.name == "futex" and k.instance.notifier.fileno() is None


def test_direct_wake_many_threads() -> None:
    with ksvc.open(completion_sink="direct-wake", notifier="futex") as k:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(200):
                    assert k.fcntl(0, 1) >= 0
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("sink", ["ring", "direct-wake"])
def test_asyncio_with_futex(sink: str, tmp_path: object) -> None:
    async def main() -> None:
        async with ksvc.open_async(notifier="futex", completion_sink=sink) as k:
            fd = await k.open("/proc/self/stat", os.O_RDONLY)
            results = await asyncio.gather(*(k.fcntl(fd, 1) for _ in range(50)))
            assert len(results) == 50
            assert await k.pread(fd, 5, 0) == os.pread(fd, 5, 0)
            await k.close(fd)

    asyncio.run(main())


@pytest.mark.parametrize("lanes", [True, False])
def test_direct_wake_bulk_larger_than_the_ring_is_woken_not_polled(lanes: bool, tmp_path: object) -> None:
    """A bulk of four submit rings and more, its last entry failing: every entry runs, results equal
    os.pread, the caller waiting for ring room is woken by the next delivery (not by its recheck timeout),
    and the bulk's own wake-up is set once, when all of it is in (not at its first entry)."""
    path = os.path.join(str(tmp_path), "data")
    payload = os.urandom(1 << 16)
    with open(path, "wb") as f:
        f.write(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        with ksvc.open(completion_sink="direct-wake", lanes=lanes) as k:
            c = k._completer
            n = 4 * c._sring.size + 1
            offs = [(i * 61) % (len(payload) - 8) for i in range(n)]
            waits: list[bool] = []
            real_wait = c.notifier.wait

            def counted_wait(timeout: float | None = None) -> bool:
                woken = real_wait(timeout)
                waits.append(woken)
                return woken

            c.notifier.wait = counted_wait  # type: ignore[method-assign]
            event_waits = [0]
            make = c._make_event

            def counted_event() -> FutexEvent:
                ev = make()
                real = ev.wait

                class Counted:
                    def set(self) -> None:
                        ev.set()

                    def is_set(self) -> bool:
                        return ev.is_set()

                    def wait(self, timeout: float | None = None) -> bool:
                        event_waits[0] += 1
                        return real(timeout)

                return Counted()  # type: ignore[return-value]

            c._make_event = counted_event
            assert k.pread_many(fd, 8, offs) == [payload[o : o + 8] for o in offs]
            with pytest.raises(OSError) as exc:
                k.pread_many(fd, 8, offs[:-1] + [-8])
            assert exc.value.errno == 22
            assert waits, "the bulk never waited for ring room: make it larger than the ring"
            assert waits.count(False) <= 1, f"{waits.count(False)} of {len(waits)} waits for ring room timed out"
            bulks = 2 * -(-n // BULK_MAX)  # the waiters of both calls
            assert event_waits[0] <= 2 * bulks, f"{event_waits[0]} waits on the bulk's wake-up: it was set early"
    finally:
        os.close(fd)
