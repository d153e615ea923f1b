"""sqpoll: selected by name, same results as os.*, and no io_uring_enter per batch while the poller is awake."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ksvc_basic.composite import CompositeIoUring
from ksvc_sqpoll.feature import SqpollFeature

import ksvc_host as ksvc
from ksvc_host import testing
from ksvc_host.abi.io_uring import SetupFlag
from ksvc_host.testing import shared_ring_statx


def test_conformance_backend() -> None:
    testing.check_io_backend(lambda: CompositeIoUring([SqpollFeature(idle_ms=100)], 16, SqpollFeature().setup_flags(0),
                                                      sq_thread_idle_ms=100))  # fmt: skip


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_stack(dispatcher: str) -> None:
    testing.check_instance(io_backend="sqpoll", dispatcher=dispatcher)


def test_no_enter_per_batch_while_the_poller_is_awake(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 16))
    with ksvc.open(io_backend="sqpoll", options={"sq_idle_ms": 2000}) as k:
        ring = k.instance.io_backend.ring  # type: ignore[attr-defined]
        assert ring.flags & SetupFlag.SQPOLL
        fd = k.open(p, os.O_RDONLY)
        k.pread(fd, 10, 0)  # wakes the poller if it slept
        before = ring.enter_calls
        for i in range(200):
            assert k.pread(fd, 256, i * 256) == os.pread(fd, 256, i * 256)
        entered = ring.enter_calls - before
        assert entered <= 5, f"{entered} io_uring_enter calls for 200 reads"
        k.close(fd)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_a_read_stream_keeps_the_poller_fed_and_equals_os_pread(tmp_path: Path, dispatcher: str) -> None:
    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 20))
    fd = os.open(p, os.O_RDONLY)
    offs = [(i * 7919 * 512) % ((1 << 20) + 4096) for i in range(3000)]  # some past the end: short reads
    try:
        with ksvc.open(io_backend="sqpoll", dispatcher=dispatcher) as k:
            assert k._completer.pipelined  # the window is cut into parts: one is read while another is handed back
            assert list(k.pread_iter(fd, 4096, offs, depth=64)) == [os.pread(fd, 4096, o) for o in offs]
            stream = k.pread_iter(fd, 4096, offs, depth=64)
            assert next(stream) == os.pread(fd, 4096, offs[0])
            stream.close()  # leaving early: the parts in flight are reaped, nothing stays pending
            for _ in range(200):
                if not k._completer.pending_count():
                    break
                shared_ring_statx(k)  # through the shared channel, which reaps the parts left behind
            assert k._completer.pending_count() == 0
    finally:
        os.close(fd)


def test_selection_and_composition_names() -> None:
    with ksvc.open(io_backend="sqpoll") as k:
        assert k.instance.io_backend.name == "basic+sqpoll"
        assert k.instance.selection.io_features == ("sqpoll",)


def test_bad_option_is_a_clear_error() -> None:
    with pytest.raises(ksvc.KsvcError, match="sq_idle_ms"):
        ksvc.open(io_backend="sqpoll", options={"sq_idle_ms": -5})


@pytest.mark.skipif(__import__("shutil").which("strace") is None, reason="strace is not installed")
def test_strace_shows_no_enter_per_batch(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 16))
    script = textwrap.dedent(f"""
        import os, sys, ksvc_host as ksvc
        with ksvc.open(io_backend="sqpoll", options={{"sq_idle_ms": 2000}}) as k:
            fd = k.open({str(p)!r}, os.O_RDONLY)
            k.pread(fd, 10, 0)
            os.write(2, b"MARK-START\\n")
            offs = [i * 256 for i in range(200)]
            assert list(k.pread_iter(fd, 256, offs)) == [os.pread(fd, 256, o) for o in offs]
            os.write(2, b"MARK-END\\n")
    """)
    log = tmp_path / "trace"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=io_uring_enter,write", "-o", str(log), sys.executable,
                          "-c", script], capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0 and "ptrace" in out.stderr:
        pytest.skip(f"strace cannot trace here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "MARK-START" in line)
    end = next(i for i, line in enumerate(lines) if "MARK-END" in line)
    enters = [line for line in lines[start:end] if "io_uring_enter(" in line]
    assert len(enters) <= 5, f"{len(enters)} io_uring_enter calls for 200 reads:\n" + "\n".join(enters[:10])


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A 1 MiB file of random bytes, open read-write, and its contents."""
    data = os.urandom(1 << 20)
    path = tmp_path / "d"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    yield fd, data
    os.close(fd)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_stack_with_every_file_call_on_the_assist_ring(dispatcher: str) -> None:
    # A backlog of 1: nearly every positioned read and write takes the plain ring beside the poller.
    testing.check_instance(io_backend="sqpoll", dispatcher=dispatcher, options={"sq_assist_backlog": 1})


@pytest.mark.parametrize("backlog", [1, 8])
def test_assist_ring_reads_and_writes_equal_os(data_fd: tuple[int, bytes], backlog: int) -> None:
    fd, _ = data_fd
    offs = [(i * 7919 * 512) % ((1 << 20) + 4096) for i in range(3000)]  # some past the end: short reads
    with ksvc.open(io_backend="sqpoll", options={"sq_assist_backlog": backlog}) as k:
        lane = k.instance.dispatcher.turn.express
        assert lane is not None
        assert list(k.pread_iter(fd, 4096, offs, depth=64)) == [os.pread(fd, 4096, o) for o in offs]
        assert k.pread_many(fd, 512, offs[:300]) == [os.pread(fd, 512, o) for o in offs[:300]]
        assert lane.assist_entries > 0  # the poller's backlog sent some to the assist ring
        payload = os.urandom(4096)
        assert k.pwrite_many(fd, payload * 8, 4096, [i * 4096 for i in range(8)]) == [4096] * 8
        assert all(os.pread(fd, 4096, i * 4096) == payload for i in range(8))
        with pytest.raises(OSError) as info:
            k.pread_many(-5 & 0x7FFF_FFFF, 10, [0])  # a bad descriptor: EBADF, as os.pread says
        assert info.value.errno == 9
        assert k.instance.io_backend.inflight() == 0  # type: ignore[attr-defined]


def test_sq_assist_false_builds_no_second_ring_and_bad_options_are_refused() -> None:
    with ksvc.open(io_backend="sqpoll", options={"sq_assist": False}) as k:
        assert k.instance.io_backend.assist is None  # type: ignore[attr-defined]
    with ksvc.open(io_backend="sqpoll") as k:
        assert k.instance.io_backend.assist is not None  # type: ignore[attr-defined]
    with pytest.raises(ksvc.KsvcError, match="sq_assist_backlog"):
        ksvc.open(io_backend="sqpoll", options={"sq_assist_backlog": -1})
    with pytest.raises(ksvc.KsvcError, match="sq_assist"):
        ksvc.open(io_backend="sqpoll", options={"sq_assist": "yes"})
    with pytest.raises(ksvc.KsvcError, match="needs sq_assist=True"):
        ksvc.open(io_backend="sqpoll", options={"sq_assist": False, "sq_assist_backlog": 4})


def test_streams_and_bulks_beside_the_sq_thread_equal_os_pread(data_fd: tuple[int, bytes]) -> None:
    # The caller's share follows the SQ thread's backlog; whatever it settles on, results equal os.pread.
    fd, _ = data_fd
    offs = [(i * 7919 * 4096) % (1 << 20) for i in range(20000)]
    with ksvc.open(io_backend="sqpoll", options={"sq_assist_backlog": 0}) as k:
        lane = k.instance.dispatcher.turn.express
        assert lane is not None
        assert list(k.pread_iter(fd, 4096, offs, depth=64)) == [os.pread(fd, 4096, o) for o in offs]
        assert k.pread_many(fd, 4096, offs[:64]) == [os.pread(fd, 4096, o) for o in offs[:64]]
        assert k.instance.io_backend.inflight() == 0  # type: ignore[attr-defined]


def test_bulk_calls_beside_the_sq_thread_equal_os_pread(data_fd: tuple[int, bytes]) -> None:
    fd, data = data_fd
    offs = [(i * 7919 * 512) % ((1 << 20) + 4096) for i in range(64)]  # some past the end: short reads
    with ksvc.open(io_backend="sqpoll") as k:
        lane = k.instance.dispatcher.turn.express
        assert lane is not None
        for _ in range(50):
            assert k.pread_many(fd, 4096, offs) == [os.pread(fd, 4096, o) for o in offs]
        assert k.pwrite_many(fd, data[:4096] * 4, 4096, [0, 4096, 8192, 12288]) == [4096] * 4

    async def main() -> None:
        k = await ksvc.open_async(io_backend="sqpoll")
        try:
            for _ in range(20):
                assert await k.pread_many(fd, 4096, offs) == [os.pread(fd, 4096, o) for o in offs]
        finally:
            await k.aclose()

    asyncio.run(main())


def test_only_the_thread_driver_reads_through_the_assist_ring(data_fd: tuple[int, bytes]) -> None:
    # A request belongs to the thread that submitted it and is cancelled when that thread exits. The
    # assist ring is submitted by whoever runs the turn: with the thread driver, its one thread; with the
    # inline driver any caller's, which may exit before a cold read completes, so that driver forgoes it
    # when it is built and every read goes through the SQ thread's ring.
    fd, _ = data_fd
    offs = [(i * 7919 * 4096) % (1 << 20) for i in range(3000)]
    want = [os.pread(fd, 4096, o) for o in offs]
    for dispatcher in ("inline", "thread"):
        options = {"sq_assist_backlog": 1}
        with ksvc.open(io_backend="sqpoll", dispatcher=dispatcher, lanes=False, options=options) as k:
            lane = k.instance.dispatcher.turn.express
            assert lane is not None
            assert lane.has_assist_ring is (dispatcher == "thread")
            got: list[object] = []

            def worker(k: ksvc.Ksvc = k, got: list[object] = got) -> None:
                got.append(list(k.pread_iter(fd, 4096, offs)))
                got.append(k.pread_many(fd, 4096, offs[:64]))

            t = threading.Thread(target=worker)
            t.start()
            t.join()
            assert got == [want, want[:64]]
            assert k.pread_many(fd, 4096, offs[:64]) == want[:64]
            if dispatcher == "inline":
                assert lane.assist_entries == 0
            else:
                assert lane.assist_entries > 0  # a backlog of 1 sends nearly every read there
