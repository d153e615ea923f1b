"""pread_iter: a stream of reads with a bounded number in flight, equal to os.pread one by one."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host.frontend.operations import ReadStream

pytestmark = pytest.mark.usefixtures("lane_impl")  # lane.c and its pure-Python twin

SIZE = 1 << 20


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    """A 1 MiB file of random bytes, open for reading."""
    path = tmp_path / "data"
    path.write_bytes(os.urandom(SIZE))
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.fixture(params=["thread", "inline", "lanes"])
def ks(request: pytest.FixtureRequest, impl: str) -> Iterator[ksvc.Ksvc]:
    """A default-stack instance built after the implementation was selected: streams through the shared
    channel (either dispatcher), or through the calling thread's lane (where lanes exist)."""
    lanes = request.param == "lanes"
    with ksvc.open(dispatcher="thread" if lanes else request.param, lanes=lanes) as k:
        yield k


def _offsets(seed: int, n: int, size: int) -> list[int]:
    rng = random.Random(seed)
    # Aligned and unaligned, inside the file, straddling its end and past it.
    return [rng.choice([rng.randrange(0, SIZE // size) * size, rng.randrange(0, SIZE + 2 * size)]) for _ in range(n)]


@pytest.mark.parametrize("n,size,depth", [(0, 4096, 64), (1, 4096, 64), (1000, 4096, 64), (700, 512, 7),
                                          (300, 100, 1), (50, 4096, 1000)])  # fmt: skip
def test_equals_os_pread(ks: ksvc.Ksvc, data_fd: int, n: int, size: int, depth: int) -> None:
    offs = _offsets(n + depth, n, size)
    assert list(ks.pread_iter(data_fd, size, offs, depth=depth)) == [os.pread(data_fd, size, o) for o in offs]


def test_offsets_from_a_generator_never_run_more_than_depth_ahead(ks: ksvc.Ksvc, data_fd: int) -> None:
    offs = _offsets(5, 2000, 4096)
    pulled = 0

    def gen() -> Iterable[int]:
        nonlocal pulled
        for o in offs:
            pulled += 1
            yield o

    for depth in (48, 64):
        pulled = 0
        got = []
        for data in ks.pread_iter(data_fd, 4096, gen(), depth=depth):
            assert pulled - len(got) <= depth  # offsets taken but not yet handed back: the reads in flight
            got.append(data)
        assert got == [os.pread(data_fd, 4096, o) for o in offs]


def test_a_failed_read_raises_after_the_ones_before_it(ks: ksvc.Ksvc, data_fd: int) -> None:
    offs = [0, 4096, -4096, 8192]
    with pytest.raises(OSError) as direct:
        os.pread(data_fd, 16, -4096)
    got = []
    with pytest.raises(OSError) as exc:
        for data in ks.pread_iter(data_fd, 16, offs, depth=2):
            got.append(data)
    assert exc.value.errno == direct.value.errno == errno.EINVAL
    assert got == [os.pread(data_fd, 16, 0), os.pread(data_fd, 16, 4096)]


def test_a_bad_descriptor_raises_ebadf(ks: ksvc.Ksvc) -> None:
    r, w = os.pipe()
    ks.write(w, b"x")  # a thread lane, if any, is made now: its ring does not get r's number once closed
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as exc:
        list(ks.pread_iter(r, 16, [0, 1, 2]))
    assert exc.value.errno == errno.EBADF


def test_a_pipe_raises_espipe_as_os_pread_does(ks: ksvc.Ksvc) -> None:
    # No lane takes a positioned read of a pipe: the stream hands it to the shared channel, in order.
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        with pytest.raises(OSError) as direct:
            os.pread(r, 3, 0)
        with pytest.raises(OSError) as exc:
            list(ks.pread_iter(r, 3, [0, 3]))
        assert exc.value.errno == direct.value.errno == errno.ESPIPE
        assert os.read(r, 3) == b"abc"  # nothing was consumed
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("depth", [0, -3, 1.5, True, None])
def test_bad_depth_is_a_clear_error_before_anything_runs(ks: ksvc.Ksvc, data_fd: int, depth: object) -> None:
    with pytest.raises(ValueError, match="depth must be a positive int"):
        ks.pread_iter(data_fd, 16, [0], depth=depth)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="negative length"):
        ks.pread_iter(data_fd, -1, [0])


def test_leaving_early_loses_nothing(ks: ksvc.Ksvc, data_fd: int) -> None:
    offs = _offsets(9, 5000, 4096)
    stream = ks.pread_iter(data_fd, 4096, offs, depth=64)
    first = [next(stream) for _ in range(10)]
    stream.close()  # parts still in flight complete in the background
    assert first == [os.pread(data_fd, 4096, o) for o in offs[:10]]
    # The instance goes on working, and what was in flight is reaped, not leaked.
    assert ks.pread(data_fd, 100, 5) == os.pread(data_fd, 100, 5)
    for _ in range(200):
        if ks._completer.pending_count() == 0:
            break
        ks.pread(data_fd, 1, 0)  # each call runs the dispatcher (inline) or waits on it (thread)
    assert ks._completer.pending_count() == 0


def test_the_window_is_cut_into_parts_only_for_a_kernel_sq_thread() -> None:
    one = ReadStream(3, 4096, [], 64)
    assert (one.step, one.parts_in_flight) == (64, 1)
    for depth in (3, 4, 5, 63, 64, 65, 100, 1000):
        piped = ReadStream(3, 4096, [], depth, ReadStream.PIPELINED_PARTS)
        assert piped.parts_in_flight >= ReadStream.PIPELINED_PARTS
        assert depth - piped.step < piped.step * piped.parts_in_flight <= depth  # never past the depth
    small = ReadStream(3, 4096, [], 2, ReadStream.PIPELINED_PARTS)
    assert (small.step, small.parts_in_flight) == (1, 2)


@pytest.mark.parametrize("lanes", [True, False], ids=["lane", "channel"])
def test_async_equals_os_pread_and_stops_at_the_failure(impl: str, data_fd: int, lanes: bool) -> None:
    offs = _offsets(13, 900, 4096)

    async def main() -> tuple[list[bytes], list[bytes], int]:
        async with ksvc.open_async(lanes=lanes) as k:
            got = [b async for b in k.pread_iter(data_fd, 4096, offs, depth=32)]
            before = []
            err = 0
            try:
                async for b in k.pread_iter(data_fd, 16, [0, -1, 16], depth=1):
                    before.append(b)
            except OSError as exc:
                err = exc.errno
            # Leaving early: the rest completes in the background; the instance goes on.
            async for _ in k.pread_iter(data_fd, 4096, offs, depth=64):
                break
            assert await k.pread(data_fd, 10, 0) == os.pread(data_fd, 10, 0)
            return got, before, err

    got, before, err = asyncio.run(main())
    assert got == [os.pread(data_fd, 4096, o) for o in offs]
    assert before == [os.pread(data_fd, 16, 0)]
    assert err == errno.EINVAL


@pytest.mark.timeout(60)
def test_async_stream_beyond_the_lane_cancelled_mid_way_and_on_a_pipe(data_fd: int) -> None:
    offs = _offsets(23, 6000, 512)

    async def main() -> None:
        async with ksvc.open_async() as k:
            # A window wider than the loop lane's slots: the reads past them take the shared channel, in order.
            got = [b async for b in k.pread_iter(data_fd, 512, offs, depth=5000)]
            assert got == [os.pread(data_fd, 512, o) for o in offs]

            async def consume() -> None:
                async for _ in k.pread_iter(data_fd, 4096, offs, depth=64):
                    await asyncio.sleep(0)

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The cancelled stream's reads gave their slots back: another full stream still reads right.
            lane = k.loop_lane.lane
            for _ in range(50):
                if lane is None or lane.inflight == 0:
                    break
                await asyncio.sleep(0.01)
            assert lane is None or lane.inflight == 0
            assert [b async for b in k.pread_iter(data_fd, 4096, offs[:300], depth=64)] == [
                os.pread(data_fd, 4096, o) for o in offs[:300]
            ]
            r, w = os.pipe()
            try:
                with pytest.raises(OSError) as err:
                    async for _ in k.pread_iter(r, 16, [0], depth=4):
                        pass
                with pytest.raises(OSError) as direct:
                    os.pread(r, 16, 0)
                assert err.value.errno == direct.value.errno == errno.ESPIPE
            finally:
                os.close(r)
                os.close(w)

    asyncio.run(main())


@pytest.mark.parametrize("preset", ["default", "server"])
def test_a_stream_never_silences_another_threads_wait(data_fd: int, preset: str) -> None:
    """A thread blocked on a receive is woken when its data comes, whatever a stream did meanwhile."""
    import socket
    import threading

    try:
        k = ksvc.open(preset=preset)
    except (LookupError, ValueError) as exc:
        pytest.skip(f"preset {preset!r} unavailable here: {exc}")
    a, b = socket.socketpair()
    got: list[bytes] = []
    try:
        with k:
            t = threading.Thread(target=lambda: got.append(k.recv(a.fileno(), 100)), daemon=True)
            t.start()
            time_limit = 50
            while k._completer.pending_count() == 0 and time_limit:  # the receive is in flight
                threading.Event().wait(0.01)
                time_limit -= 1
            offs = _offsets(17, 300, 4096)
            for i, data in enumerate(k.pread_iter(data_fd, 4096, offs, depth=64)):
                assert data == os.pread(data_fd, 4096, offs[i])
            threading.Event().wait(0.05)  # the stream has ended; the receiver sleeps on
            b.send(b"wake up")
            t.join(5)
            assert got == [b"wake up"], "the receiving thread was not woken"
            stream = k.pread_iter(data_fd, 4096, offs, depth=64)
            next(stream)  # a stream left in the middle, while the receiver waits again
            t2 = threading.Thread(target=lambda: got.append(k.recv(a.fileno(), 100)), daemon=True)
            t2.start()
            threading.Event().wait(0.05)
            b.send(b"again")
            t2.join(5)
            assert got == [b"wake up", b"again"]
            stream.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("preset", ["default", "server"])
def test_an_async_stream_paused_mid_way_never_delays_another_task(data_fd: int, preset: str) -> None:
    import socket

    a, b = socket.socketpair()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        try:
            k = await ksvc.open_async(preset=preset)
        except (LookupError, ValueError) as exc:
            pytest.skip(f"preset {preset!r} unavailable here: {exc}")
        async with k:
            got = loop.create_future()

            def on_recv() -> None:
                got.set_result(loop.time())

            receiver = asyncio.ensure_future(k.recv(a.fileno(), 100))
            receiver.add_done_callback(lambda _: on_recv())
            await asyncio.sleep(0.05)  # the receive is in flight
            offs = _offsets(19, 500, 4096)
            async for data in k.pread_iter(data_fd, 4096, offs, depth=64):
                assert data == os.pread(data_fd, 4096, offs[0])
                sent = loop.time()
                loop.call_later(0.05, b.send, b"x")
                await asyncio.sleep(1.0)  # the stream's consumer pauses; the receiver must not
                break
            arrived = await got
            assert receiver.result() == b"x"
            return arrived - sent

    try:
        delay = asyncio.run(main())
    finally:
        a.close()
        b.close()
    assert delay < 0.9, f"the other task's receive completed only when the stream went on ({delay:.2f} s)"


def test_statistics_count_every_read_once_the_call_returns(ks: ksvc.Ksvc, data_fd: int) -> None:
    # Turns a caller runs for itself publish the shared page's statistics late (not per turn),
    # but by the time its call returns or its stream ends they count every read.
    # (Calls a thread's own lane runs are counted by the lane, not on the page.)
    page = ks.instance.shared_page
    before = page.entries_processed + ks._lanes.entries()
    for i in range(10):
        assert ks.pread(data_fd, 100, i) == os.pread(data_fd, 100, i)
    assert page.entries_processed + ks._lanes.entries() - before >= 10
    before = page.entries_processed + ks._lanes.entries()
    offs = _offsets(9, 500, 4096)
    assert list(ks.pread_iter(data_fd, 4096, offs)) == [os.pread(data_fd, 4096, o) for o in offs]
    deadline = time.monotonic() + 2.0  # the dispatcher's thread may be ending a turn that publishes them
    while page.entries_processed + ks._lanes.entries() - before < 500 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert page.entries_processed + ks._lanes.entries() - before >= 500
