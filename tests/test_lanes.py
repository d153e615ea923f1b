"""Thread lanes: a calling thread's own channel and io_uring (ksvc_host/lanes.py, ksvc_basic/lane.c).

Differential against ``os``, the ABI constants pinned against the Python
tables, ownership by one thread, thread exit, close while a call waits,
fork, and the asyncio loop's lane. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host.abi import io_uring as U
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS as NR

pytestmark = pytest.mark.usefixtures("lane_impl")


@pytest.fixture
def k() -> Iterator[ksvc.Ksvc]:
    with ksvc.open() as inst:
        yield inst


@pytest.fixture
def data(tmp_path: object) -> Iterator[tuple[int, bytes]]:
    payload = os.urandom(1 << 16)
    fd = os.open(os.path.join(str(tmp_path), "data"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, payload)
    yield fd, payload
    os.close(fd)


def _entries(k: ksvc.Ksvc) -> int:
    return k._lanes.entries()


def test_constants_are_the_kernels_and_the_channels() -> None:
    from ksvc_basic import own_rings

    c = own_rings.lane_module().CONSTANTS
    for name in ("FSYNC", "ACCEPT", "ASYNC_CANCEL", "CONNECT", "OPENAT", "CLOSE", "READ", "WRITE", "SEND", "RECV"):
        assert c[f"IORING_OP_{name}"] == U.IoringOp[name]
    for name in ("SINGLE_ISSUER", "DEFER_TASKRUN", "COOP_TASKRUN", "SUBMIT_ALL", "CLAMP"):
        assert c[f"IORING_SETUP_{name}"] == U.SetupFlag[name]
    assert c["IORING_ENTER_GETEVENTS"] == U.EnterFlag.GETEVENTS and c["IORING_ENTER_EXT_ARG"] == U.EnterFlag.EXT_ARG
    assert c["IORING_FEAT_SINGLE_MMAP"] == U.Feature.SINGLE_MMAP and c["IORING_FEAT_EXT_ARG"] == U.Feature.EXT_ARG
    assert c["IORING_OFF_CQ_RING"] == U.OFF_CQ_RING and c["IORING_OFF_SQES"] == U.OFF_SQES
    assert c["IORING_REGISTER_EVENTFD"] == U.Register.REGISTER_EVENTFD
    assert c["IORING_FSYNC_DATASYNC"] == U.IORING_FSYNC_DATASYNC
    assert (c["NR_IO_URING_SETUP"], c["NR_IO_URING_ENTER"], c["NR_IO_URING_REGISTER"]) == (
        NR["io_uring_setup"], NR["io_uring_enter"], NR["io_uring_register"])  # fmt: skip
    assert c["SQE_SIZE"] == 64 and c["CQE_SIZE"] == 16 and c["PARAMS_SIZE"] == 120
    assert c["SUBMIT_SIZE"] == L.SUBMIT_ENTRY.size and c["COMPLETE_SIZE"] == L.COMPLETION_ENTRY_SIZE


def test_ordinary_calls_equal_os_and_take_the_lane(k: ksvc.Ksvc, data: tuple[int, bytes], tmp_path: object) -> None:
    fd, payload = data
    before = _entries(k)
    for off, n in ((0, 4096), (8191, 100), (len(payload) - 3, 10), (len(payload) + 5, 10), (7, 0)):
        assert k.pread(fd, n, off) == os.pread(fd, n, off)
    assert k.pwrite(fd, b"abc", 5) == os.pwrite(fd, b"abc", 5) == 3
    assert k.pwrite(fd, memoryview(b"xyz"), 9) == 3 and os.pread(fd, 3, 9) == b"xyz"
    r, w = os.pipe()
    try:
        assert k.write(w, bytearray(b"hello")) == 5 and k.read(r, 3) == b"hel" and k.read(r, 100) == b"lo"
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair()
    try:
        assert k.send(a.fileno(), b"ping") == 4 and k.recv(b.fileno(), 10) == b"ping"
    finally:
        a.close()
        b.close()
    path = os.path.join(str(tmp_path), "data")
    g = k.open(path, os.O_RDONLY)
    assert os.pread(g, 4, 0) == os.pread(fd, 4, 0)
    assert k.fsync(fd) is None and k.fdatasync(fd) is None
    assert k.close(g) is None
    with pytest.raises(OSError) as info:
        os.fstat(g)
    assert info.value.errno == 9
    assert _entries(k) - before >= 15, "these calls are the lane's"


def _stat_cases(tmp: str, fd: int) -> list[tuple[str, Callable[[Any], Any], Callable[[], Any]]]:
    """(what, the call through KSVC, the same call through os): files, a directory, symlinks (followed and
    not), a fifo, a character device (its rdev), a descriptor of each, and the failures."""
    path = os.path.join(tmp, "data")
    link, dangling, fifo = os.path.join(tmp, "link"), os.path.join(tmp, "dangling"), os.path.join(tmp, "fifo")
    os.symlink(path, link)
    os.symlink(os.path.join(tmp, "missing"), dangling)
    os.mkfifo(fifo)
    cases: list[tuple[str, Callable[[Any], Any], Callable[[], Any]]] = []
    for p in (path, tmp, link, fifo, "/dev/null"):
        cases.append((f"stat {p}", lambda k, p=p: k.stat(p), lambda p=p: os.stat(p)))
    for p in (link, dangling, path):
        cases.append((f"lstat {p}", lambda k, p=p: k.lstat(p), lambda p=p: os.lstat(p)))
    r, w = os.pipe()
    cases += [(f"fstat {what}", lambda k, d=d: k.fstat(d), lambda d=d: os.fstat(d))
              for what, d in (("file", fd), ("pipe", r), ("stdin-like /dev/null", os.open("/dev/null", 0)))]
    cases += [
        ("stat missing", lambda k: k.stat(os.path.join(tmp, "missing")), lambda: os.stat(os.path.join(tmp, "missing"))),
        ("stat dangling", lambda k: k.stat(dangling), lambda: os.stat(dangling)),
        ("stat too long", lambda k: k.stat("x" * 5000), lambda: os.stat("x" * 5000)),
        ("stat not a directory", lambda k: k.stat(path + "/x"), lambda: os.stat(path + "/x")),
        ("fstat closed", lambda k: k.fstat(w + 1000), lambda: os.fstat(w + 1000)),
    ]
    return cases


_STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
                "st_mtime_ns", "st_ctime_ns", "st_blocks", "st_blksize", "st_rdev")  # fmt: skip
"""Every field of a stat result (== compares only the first ten, with times in whole seconds)."""


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        st = call()
    except OSError as exc:
        return ("OSError", exc.errno)
    return tuple(getattr(st, f) for f in _STAT_FIELDS)


def test_stat_calls_equal_os_and_take_the_lane(k: ksvc.Ksvc, data: tuple[int, bytes], tmp_path: object) -> None:
    fd, _ = data
    cases = _stat_cases(str(tmp_path), fd)
    before = _entries(k)
    for what, through, direct in cases:
        assert _outcome(functools.partial(through, k)) == _outcome(direct), what
    assert _entries(k) - before >= len(cases) - 1, "the stat calls are the lane's"

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            start = lane.entries
            for what, through, direct in cases:
                want = _outcome(direct)
                try:
                    st = await asyncio.wait_for(through(a), 5)
                except OSError as exc:
                    got: Any = ("OSError", exc.errno)
                else:
                    got = tuple(getattr(st, f) for f in _STAT_FIELDS)
                assert got == want, what
            assert lane.entries - start >= len(cases) - 1, "the stat calls are the loop lane's"

    asyncio.run(main())


def test_a_lane_takes_no_call_translate_would_send_to_a_worker(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    # translate() is where a call's tier is decided by its arguments and descriptors; lane.c's checks
    # are a compiled copy for the calls a lane carries: it may take fewer, never one translate refuses.
    from ksvc_host import native
    from ksvc_host.translate import translate

    fd, payload = data
    lane = k._lanes.mine()
    assert lane is not None
    buf = native.alloc(64)
    addr = native.address_of(buf)
    r, w = os.pipe()
    nr_, nw = os.pipe()
    os.set_blocking(nr_, False)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        os.write(w, b"x" * 16)
        os.write(nw, b"y" * 16)
        b.send(b"z" * 16)
        cases = {
            "pread64, file": (NR["pread64"], (fd, addr, 8, 0, 0, 0), True),
            "pread64, negative offset": (NR["pread64"], (fd, addr, 8, (1 << 64) - 1, 0, 0), False),
            "pread64, pipe": (NR["pread64"], (r, addr, 8, 0, 0, 0), False),
            "read, blocking pipe": (NR["read"], (r, addr, 8, 0, 0, 0), True),
            "read, O_NONBLOCK pipe": (NR["read"], (nr_, addr, 8, 0, 0, 0), False),
            "recvfrom, O_NONBLOCK socket": (NR["recvfrom"], (a.fileno(), addr, 8, 0, 0, 0), False),
            "recvfrom with an address": (NR["recvfrom"], (b.fileno(), addr, 8, 0, addr + 32, addr + 48), False),
            "read, fd beyond 32 bits": (NR["read"], (1 << 40, addr, 8, 0, 0, 0), False),
        }
        for name, (nr, args, exact) in cases.items():
            assert (translate(nr, args) is not None) is exact, name
            got = lane.call(nr, *args)
            if not exact:
                assert got is None, f"{name}: the lane took a call translate sends to a worker"
            elif got is not None:
                assert got == 8, name
        assert native.read_user(addr, 8) == b"x" * 8  # the last call the lane took: the pipe's bytes
        assert os.pread(fd, 8, 0) == payload[:8]
    finally:
        for x in (r, w, nr_, nw):
            os.close(x)
        a.close()
        b.close()


def test_errors_are_os_errors(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, _ = data
    r, w = os.pipe()
    os.close(w)
    try:
        for call in (lambda m: m.pread(r, 10, 0), lambda m: m.pread(fd, 10, -1), lambda m: m.read(10_000, 1),
                     lambda m: m.write(r, b"x"), lambda m: m.open("/nonexistent/x", os.O_RDONLY)):  # fmt: skip
            with pytest.raises(OSError) as mine:
                call(k)
            with pytest.raises(OSError) as theirs:
                call(os)
            assert (type(mine.value), mine.value.errno) == (type(theirs.value), theirs.value.errno)
        with pytest.raises(TypeError):
            k.pread(fd, 1.5, 0)  # type: ignore[arg-type]
        with pytest.raises(OverflowError):
            k.pread(fd, 1, 1 << 64)
    finally:
        os.close(r)


def test_nonblocking_descriptor_gives_eagain_at_once(k: ksvc.Ksvc) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError):
            k.read(r, 10)
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(r)
        os.close(w)


def test_each_thread_has_its_own_lane_and_a_lane_refuses_other_threads(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, payload = data
    mine = k._lanes.mine()
    assert mine is not None and mine.mine
    seen: list[object] = []

    def other() -> None:
        seen.append(k._lanes.mine())
        assert mine.read(NR["pread64"], fd, 10, 0) is None  # another thread's lane: not taken
        assert mine.call(NR["pread64"], fd, 0, 10, 0) is None
        seen.append(k.pread(fd, 10, 0))

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert seen[0] is not None and seen[0] is not mine and seen[1] == payload[:10]


def test_a_thread_that_exits_releases_its_ring(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, _ = data
    rings: list[int] = []

    def work() -> None:
        k.pread(fd, 10, 0)
        rings.append(k._lanes.mine().fileno)

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    gc.collect()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and os.path.exists(f"/proc/self/fd/{rings[0]}") and _is_ring(rings[0]):
        time.sleep(0.01)
    assert not _is_ring(rings[0]), "an exited thread's io_uring is still open"


def _is_ring(fd: int) -> bool:
    try:
        return "io_uring" in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False


def test_blocked_reader_on_another_thread_never_holds_up_this_one(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, payload = data
    r, w = os.pipe()
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(k.read(r, 5)), daemon=True)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    for i in range(1000):
        assert k.pread(fd, 16, i) == payload[i : i + 16]
    assert time.monotonic() - t0 < 2.0
    assert k.raw.pending() == 1  # the reader, in its lane
    os.write(w, b"done!")
    t.join(5)
    assert got == [b"done!"]
    os.close(r)
    os.close(w)


def test_close_cancels_a_call_waiting_in_a_lane() -> None:
    k = ksvc.open()
    r, w = os.pipe()
    out: list[BaseException] = []

    def reader() -> None:
        try:
            k.read(r, 5)
        except BaseException as exc:  # noqa: BLE001 - recorded
            out.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    k.close(timeout=0.2)
    t.join(3)
    assert not t.is_alive() and time.monotonic() - t0 < 2.0
    assert isinstance(out[0], OSError) and out[0].errno == 125  # ECANCELED, as on the shared channel
    with pytest.raises(ksvc.ClosedError):
        k.pread(r, 1, 0)
    os.write(w, b"after")
    assert os.read(r, 10) == b"after", "the cancelled read took bytes written later"
    os.close(r)
    os.close(w)


def test_a_forked_child_cannot_reach_the_parents_lane(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, payload = data
    assert k.pread(fd, 8, 0) == payload[:8]
    ring = k._lanes.mine().fileno
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            try:
                k.pread(fd, 8, 0)
                code = 1  # the parent's instance served the child
            except ksvc.ClosedError:
                pass
            if _is_ring(ring):
                code = 2  # the parent's ring is still open in the child
        finally:
            os.write(wfd, bytes([code]))
            os._exit(0)
    os.close(wfd)
    got = os.read(rfd, 1)
    os.waitpid(pid, 0)
    os.close(rfd)
    assert got == b"\0", {b"\1": "the child used the parent's lane", b"\2": "the child kept the ring"}.get(got, got)
    assert k.pread(fd, 8, 0) == payload[:8]


def test_asyncio_loop_lane_equals_os_and_resolves_in_batches(data: tuple[int, bytes]) -> None:
    fd, payload = data

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            before = lane.entries
            offs = list(range(0, 64 * 997, 997))
            got = await asyncio.wait_for(asyncio.gather(*(a.pread(fd, 100, o) for o in offs)), 5)
            assert got == [payload[o : o + 100] for o in offs]
            assert lane.entries - before == 64
            assert lane.enters < lane.entries, "64 entries took as many io_uring_enter calls"
            assert await a.pwrite(fd, b"abc", 3) == 3 and os.pread(fd, 3, 3) == b"abc"
            with pytest.raises(OSError) as info:
                await a.pread(-5 & 0x7FFF_FFFF, 1, 0)
            assert info.value.errno == 9
            gc.collect()
            gc.disable()
            try:
                for _ in range(200):
                    await a.pread(fd, 64, 0)
                assert gc.collect() == 0, "a lane operation left objects to the cycle collector"
            finally:
                gc.enable()

    asyncio.run(main())


def test_asyncio_cancelled_lane_read_loses_nothing() -> None:
    async def main() -> None:
        async with ksvc.open_async() as a:
            r, w = os.pipe()
            for _ in range(20):
                task = asyncio.ensure_future(a.read(r, 10))
                await asyncio.sleep(0.002)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 5)
            os.write(w, b"later")
            assert await asyncio.wait_for(a.read(r, 10), 5) == b"later"
            assert a._lane.inflight == 0
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_loop_lane_futures_are_the_lanes_waiters_of_the_running_loop(lane_impl: str) -> None:
    from ksvc_basic import own_rings

    async def main() -> None:
        async with ksvc.open_async() as a:
            assert a._lane is not None
            fut = a._loop_lane.new_future()
            assert type(fut) is own_rings.lane_module().Waiter and fut.get_loop() is asyncio.get_running_loop()

    asyncio.run(main())


def test_asyncio_pread_many_takes_the_loop_lane_and_equals_os(data: tuple[int, bytes]) -> None:
    fd, payload = data

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            offs = [(i * 4099) % len(payload) for i in range(256)] + [len(payload) - 10, len(payload) + 7]
            before = lane.entries
            got = await asyncio.wait_for(a.pread_many(fd, 512, offs), 5)
            assert got == [os.pread(fd, 512, o) for o in offs], "short and empty reads included"
            assert lane.entries - before == len(offs), "the bulk did not take the loop's lane"
            assert await a.pread_many(fd, 10, []) == []
            # More reads than the lane has slots: the rest take the shared channel, results in order.
            many = [(i * 13) % len(payload) for i in range(5000)]
            got = await asyncio.wait_for(a.pread_many(fd, 8, many), 20)
            assert got == [payload[o : o + 8] for o in many]
            # Errors as os.pread gives them, raised after every read ran.
            r, w = os.pipe()
            for bad_fd, offsets, errno_ in ((r, [0, 1], 29), (fd, [0, -1], 22), (-5 & 0x7FFF_FFFF, [0], 9)):
                with pytest.raises(OSError) as info:
                    await asyncio.wait_for(a.pread_many(bad_fd, 4, offsets), 5)
                assert info.value.errno == errno_, (bad_fd, offsets)
            os.close(r)
            os.close(w)
            # Cancelled while in flight: nothing is left behind and the lane goes on.
            task = asyncio.ensure_future(a.pread_many(fd, 4096, [0] * 64))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            assert await asyncio.wait_for(a.pread_many(fd, 4, [1, 2]), 5) == [payload[1:5], payload[2:6]]
            for _ in range(100):
                if not lane.inflight:
                    break
                await asyncio.sleep(0.01)
            assert lane.inflight == 0
            gc.collect()
            gc.disable()
            try:
                for _ in range(50):
                    await a.pread_many(fd, 64, [0, 64, 128])
                assert gc.collect() == 0, "a bulk on the lane left objects to the cycle collector"
            finally:
                gc.enable()

    asyncio.run(main())


def test_preadinto_many_and_pwrite_many_take_the_lane_and_equal_os(k: ksvc.Ksvc, data: tuple[int, bytes]) -> None:
    fd, payload = data
    offs = [(i * 1021) % len(payload) for i in range(200)] + [len(payload) - 3]
    buf = bytearray(32 * len(offs))
    before = _entries(k)
    counts = k.preadinto_many(fd, buf, 32, offs)
    assert counts == [len(os.pread(fd, 32, o)) for o in offs]
    got = [bytes(buf[i * 32 : i * 32 + c]) for i, c in enumerate(counts)]
    assert got == [os.pread(fd, 32, o) for o in offs]
    assert _entries(k) - before == len(offs), "the bulk did not take the caller's lane"
    block = os.urandom(4 * 50)
    assert k.pwrite_many(fd, block, 50, [10, 5000, 9000, 20000]) == [50] * 4
    assert [os.pread(fd, 50, o) for o in (10, 5000, 9000, 20000)] == [block[i : i + 50] for i in range(0, 200, 50)]
    assert _entries(k) - before == len(offs) + 4
    assert k.preadinto_many(fd, bytearray(0), 0, []) == []
    r, w = os.pipe()
    try:
        for call, args, exc_type, errno_ in (
            (k.preadinto_many, (r, bytearray(8), 4, [0]), OSError, 29),
            (k.preadinto_many, (fd, bytearray(8), 4, [0, -1]), OSError, 22),
            (k.pwrite_many, (-5 & 0x7FFF_FFFF, b"abcd", 4, [0]), OSError, 9),
            (k.preadinto_many, (fd, bytearray(7), 4, [0, 4]), ValueError, None),
        ):
            with pytest.raises(exc_type) as info:
                call(*args)
            if errno_ is not None:
                assert info.value.errno == errno_, args  # type: ignore[attr-defined]
        with pytest.raises(BufferError):  # as before the lane: cffi's "Object is not writable"
            k.preadinto_many(fd, b"read-only", 4, [0])
    finally:
        os.close(r)
        os.close(w)


def test_asyncio_preadinto_many_and_pwrite_many_take_the_loop_lane_and_equal_os(data: tuple[int, bytes]) -> None:
    fd, payload = data

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            offs = [(i * 1021) % len(payload) for i in range(200)] + [len(payload) - 3, len(payload) + 9]
            buf = bytearray(32 * len(offs))
            before = lane.entries
            counts = await asyncio.wait_for(a.preadinto_many(fd, buf, 32, offs), 5)
            assert counts == [len(os.pread(fd, 32, o)) for o in offs], "short and empty reads included"
            got = [bytes(buf[i * 32 : i * 32 + c]) for i, c in enumerate(counts)]
            assert got == [os.pread(fd, 32, o) for o in offs]
            assert lane.entries - before == len(offs), "the bulk did not take the loop's lane"
            block = os.urandom(4 * 50)
            where = [10, 5000, 9000, 20000]
            assert await asyncio.wait_for(a.pwrite_many(fd, memoryview(block), 50, where), 5) == [50] * 4
            assert [os.pread(fd, 50, o) for o in where] == [block[i : i + 50] for i in range(0, 200, 50)]
            assert lane.entries - before == len(offs) + 4
            assert await a.preadinto_many(fd, bytearray(0), 0, []) == []
            # More entries than the lane has slots, in a buffer of another item size: group after group on the
            # lane, each where the last ended.
            import array

            many = [(i * 13) % (len(payload) - 8) for i in range(3000)]
            words = array.array("q", bytes(8 * len(many)))
            before = lane.entries
            assert await asyncio.wait_for(a.preadinto_many(fd, words, 8, many), 20) == [8] * len(many)
            assert words.tobytes() == b"".join(os.pread(fd, 8, o) for o in many)
            assert lane.entries - before == len(many), "the groups after the first did not take the lane"
            # Errors as the generic path gives them: raised after every entry ran, bad arguments before any.
            r, w = os.pipe()
            try:
                for call, args, exc_type, errno_ in (
                    (a.preadinto_many, (r, bytearray(8), 4, [0]), OSError, 29),
                    (a.preadinto_many, (fd, bytearray(8), 4, [0, -1]), OSError, 22),
                    (a.pwrite_many, (-5 & 0x7FFF_FFFF, b"abcd", 4, [0]), OSError, 9),
                    (a.preadinto_many, (fd, bytearray(7), 4, [0, 4]), ValueError, None),
                    (a.preadinto_many, (fd, b"read-only", 4, [0]), BufferError, None),
                ):
                    with pytest.raises(exc_type) as info:
                        await asyncio.wait_for(call(*args), 5)
                    if errno_ is not None:
                        assert info.value.errno == errno_, args  # type: ignore[attr-defined]
            finally:
                os.close(r)
                os.close(w)
            # Cancelled in flight: the lane holds the buffer until its entries are answered (it cannot be
            # resized under the kernel), then lets it go; nothing is left behind.
            target = bytearray(4096 * 64)
            task = asyncio.ensure_future(a.preadinto_many(fd, target, 4096, [0] * 64))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            for _ in range(100):
                if not lane.inflight:
                    break
                await asyncio.sleep(0.01)
            assert lane.inflight == 0
            del task
            target.extend(b"x")  # no export left: the lane released the buffer
            gc.collect()
            gc.disable()
            try:
                scratch = bytearray(64 * 3)
                for _ in range(50):
                    assert await a.preadinto_many(fd, scratch, 64, [0, 64, 128]) == [64] * 3
                    assert await a.pwrite_many(fd, scratch, 64, [0, 64, 128]) == [64] * 3
                assert gc.collect() == 0, "a bulk on the lane left objects to the cycle collector"
            finally:
                gc.enable()
            assert bytes(scratch) == os.pread(fd, 192, 0)

    asyncio.run(main())


def test_lanes_built_later_are_of_the_kind_chosen_with_the_instance(
    lane_impl: str, data: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane implementation is fixed when the instance is built: a thread's lane built afterwards, when
    the selection has changed, is still of that kind (what ``ksvc bench``'s pure-Python row relies on)."""
    from ksvc_basic import lane_reference, own_rings

    chosen = own_rings.lane_module()
    other = lane_reference if chosen is not lane_reference else object()
    fd, payload = data
    with ksvc.open() as inst:
        monkeypatch.setattr(own_rings, "lane_module", lambda: other)
        kinds: list[str] = []

        def read() -> None:
            assert inst.pread(fd, 64, 128) == payload[128:192]
            lane = inst._lanes.mine()
            kinds.append(type(lane).__module__)

        t = threading.Thread(target=read)
        t.start()
        t.join(10)
        assert not t.is_alive()
    assert kinds == [chosen.Lane.__module__], lane_impl


def test_bulks_into_buffers_from_threads_sharing_one_instance_while_one_waits(
    k: ksvc.Ksvc, data: tuple[int, bytes], tmp_path: object
) -> None:
    """4 threads run preadinto_many (and pwrite_many to a file each) on one instance while a fifth waits in
    k.read on an empty pipe and a sixth collects garbage: every result equals os.pread, nobody waits for the
    blocked reader."""
    fd, payload = data
    r, w = os.pipe()
    waited: list[bytes] = []
    waiter = threading.Thread(target=lambda: waited.append(k.read(r, 5)), daemon=True)
    waiter.start()
    stop = threading.Event()

    def collect() -> None:
        while not stop.wait(0.001):
            gc.collect()

    collector = threading.Thread(target=collect)
    collector.start()
    ran: list[int] = []  # entries each bulk thread's lane ran (a thread's lane goes when it exits)
    errors: list[BaseException] = []

    def bulk(j: int) -> None:
        try:
            out = os.open(os.path.join(str(tmp_path), f"out{j}"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for round_ in range(20):
                    offs = [(j * 7919 + round_ * 131 + i * 4099) % (len(payload) - 256) for i in range(64)]
                    buf = bytearray(256 * 64)
                    assert k.preadinto_many(fd, memoryview(buf), 256, offs) == [256] * 64
                    assert bytes(buf) == b"".join(payload[o : o + 256] for o in offs)
                    assert k.pwrite_many(out, buf, 256, [i * 256 for i in range(64)]) == [256] * 64
                    assert os.pread(out, len(buf), 0) == bytes(buf)
                lane = k._lanes.mine()
                ran.append(lane.entries if lane is not None else 0)
            finally:
                os.close(out)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=bulk, args=(j,)) for j in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    elapsed = time.monotonic() - t0
    stop.set()
    collector.join(5)
    try:
        assert not any(t.is_alive() for t in threads), "a bulk thread hung"
        assert not errors, errors
        assert ran == [20 * 64 * 2] * 4, "the bulks did not take the threads' lanes"
        assert elapsed < 10, f"the bulks took {elapsed:.1f} s beside a blocked reader"
        assert waiter.is_alive() and not waited, "the blocked reader returned without data"
        os.write(w, b"done!")
        waiter.join(5)
        assert waited == [b"done!"]
    finally:
        os.close(r)
        os.close(w)


def test_a_turn_delivers_a_bounded_batch_and_says_when_more_wait(data: tuple[int, bytes]) -> None:
    # Three budgets' worth of reads queued at once: the page cache answers each inside the submit, so an
    # unbounded turn would deliver them all in one call (and a server's busy peers, one turn for ever).
    from ksvc_basic import own_rings

    fd, payload = data
    budget = own_rings.lane_module().CONSTANTS["TURN_BUDGET"]

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            loop = asyncio.get_running_loop()
            futs = [loop.create_future() for _ in range(3 * budget)]
            for i, fut in enumerate(futs):
                assert lane.start_read(fut, NR["pread64"], fd, 8, i) is not None
            turns = [lane.turn()]  # no await until every read is in: the loop's own turns stay out of it
            assert budget <= turns[0] < 3 * budget and lane.unfinished
            while lane.unfinished and len(turns) < 50:  # a turn at its budget may find nothing left
                turns.append(lane.turn())
            assert sum(turns) == len(futs) and not lane.unfinished, turns
            assert max(turns) < 3 * budget
            await asyncio.sleep(0)
            assert [f.result() for f in futs] == [payload[i : i + 8] for i in range(len(futs))]

    asyncio.run(main())


def _host_translated_cases() -> list[tuple[str, Callable[[Any, str], Any], Callable[[str], Any]]]:
    """(what, the call through KSVC in a directory, the same call through os in its twin): calls no lane
    translates itself, so a lane runs them with the host's SQE. Each returns what can be compared."""

    def pipe_with(data: bytes) -> tuple[int, int]:
        r, w = os.pipe()
        os.write(w, data)
        return r, w

    def f(d: str) -> int:
        return os.open(os.path.join(d, "f"), os.O_RDWR)

    def vec(call: Callable[[int, list[bytearray]], Any], d: str) -> Any:
        fd, bufs = f(d), [bytearray(100), bytearray(50)]
        try:
            return call(fd, bufs), [bytes(b) for b in bufs]
        finally:
            os.close(fd)

    def on_pipe(call: Callable[[int, int], Any]) -> Any:
        r, w = pipe_with(b"hello, world")
        try:
            return call(r, w), os.read(r, 100)
        finally:
            os.close(r)
            os.close(w)

    def on_file(call: Callable[[int], Any], d: str) -> Any:
        fd = f(d)
        try:
            return call(fd), os.fstat(fd).st_size, os.pread(fd, 16, 0)
        finally:
            os.close(fd)

    def j(d: str, *names: str) -> str:
        return os.path.join(d, *names)

    def iov_read(call: Callable[[int, list[bytearray]], Any], fd: int) -> Any:
        bufs = [bytearray(5), bytearray(3)]
        return call(fd, bufs), [bytes(b) for b in bufs]

    def on_empty_nonblocking_pipe(call: Callable[[int, int], Any]) -> Any:
        r, w = os.pipe()
        os.set_blocking(r, False)
        try:
            return call(r, w)  # io_uring would wait for data; readv gives EAGAIN at once
        finally:
            os.close(r)
            os.close(w)

    cases: list[tuple[str, Callable[[Any, str], Any], Callable[[str], Any]]] = [
        ("preadv", lambda k, d: vec(lambda fd, b: k.preadv(fd, b, 10), d),
         lambda d: vec(lambda fd, b: os.preadv(fd, b, 10), d)),
        ("pwritev", lambda k, d: on_file(lambda fd: k.pwritev(fd, [b"ab", b"cde"], 3), d),
         lambda d: on_file(lambda fd: os.pwritev(fd, [b"ab", b"cde"], 3), d)),
        ("readv", lambda k, d: on_pipe(lambda r, w: iov_read(k.readv, r)),
         lambda d: on_pipe(lambda r, w: iov_read(os.readv, r))),
        ("readv, nothing to read, O_NONBLOCK (a worker's)",
         lambda k, d: on_empty_nonblocking_pipe(lambda r, w: iov_read(k.readv, r)),
         lambda d: on_empty_nonblocking_pipe(lambda r, w: iov_read(os.readv, r))),
        ("writev", lambda k, d: on_pipe(lambda r, w: k.writev(w, [b"x", b"yz"])),
         lambda d: on_pipe(lambda r, w: os.writev(w, [b"x", b"yz"]))),
        ("ftruncate", lambda k, d: on_file(lambda fd: k.ftruncate(fd, 1000), d),
         lambda d: on_file(lambda fd: os.ftruncate(fd, 1000), d)),
        ("fallocate", lambda k, d: on_file(lambda fd: k.fallocate(fd, 0, 0, 200_000), d),
         lambda d: on_file(lambda fd: os.posix_fallocate(fd, 0, 200_000), d)),
        ("fadvise", lambda k, d: on_file(lambda fd: k.fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL), d),
         lambda d: on_file(lambda fd: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL), d)),
        ("fadvise bad advice", lambda k, d: on_file(lambda fd: k.fadvise(fd, 0, 0, 99), d),
         lambda d: on_file(lambda fd: os.posix_fadvise(fd, 0, 0, 99), d)),
        ("mkdir", lambda k, d: k.mkdir(j(d, "new"), 0o750), lambda d: os.mkdir(j(d, "new"), 0o750)),
        ("mkdir existing", lambda k, d: k.mkdir(j(d, "new")), lambda d: os.mkdir(j(d, "new"))),
        ("symlink", lambda k, d: k.symlink("f", j(d, "ln")), lambda d: os.symlink("f", j(d, "ln"))),
        ("link", lambda k, d: k.link(j(d, "f"), j(d, "hard")), lambda d: os.link(j(d, "f"), j(d, "hard"))),
        ("link missing", lambda k, d: k.link(j(d, "nope"), j(d, "x")), lambda d: os.link(j(d, "nope"), j(d, "x"))),
        ("rename", lambda k, d: k.rename(j(d, "hard"), j(d, "moved")),
         lambda d: os.rename(j(d, "hard"), j(d, "moved"))),
        ("unlink", lambda k, d: k.unlink(j(d, "moved")), lambda d: os.unlink(j(d, "moved"))),
        ("unlink missing", lambda k, d: k.unlink(j(d, "moved")), lambda d: os.unlink(j(d, "moved"))),
        ("rmdir not empty", lambda k, d: k.rmdir(d), lambda d: os.rmdir(d)),
        ("rmdir", lambda k, d: k.rmdir(j(d, "new")), lambda d: os.rmdir(j(d, "new"))),
        ("statx size", lambda k, d: k.statx(j(d, "f"))[0x28:0x30],
         lambda d: os.stat(j(d, "f")).st_size.to_bytes(8, "little")),
    ]  # fmt: skip
    return cases


def _tree(d: str) -> list[tuple[str, int, int]]:
    stats = {n: os.lstat(os.path.join(d, n)) for n in os.listdir(d)}
    return sorted((n, st.st_mode, st.st_size) for n, st in stats.items())


def _twin_dirs(tmp: str, name: str) -> tuple[str, str]:
    dirs = (os.path.join(tmp, name + "-ksvc"), os.path.join(tmp, name + "-os"))
    for d in dirs:
        os.mkdir(d)
        with open(os.path.join(d, "f"), "wb") as out:
            out.write(bytes(range(256)) * 64)
    return dirs


def _result(call: Callable[[], Any]) -> Any:
    try:
        return ("ok", call())
    except OSError as exc:
        return ("OSError", exc.errno)


def test_calls_no_lane_translates_take_the_lane_with_the_hosts_sqe_and_equal_os(k: ksvc.Ksvc, tmp_path: object) -> None:
    cases = _host_translated_cases()
    mine, theirs = _twin_dirs(str(tmp_path), "blocking")
    before = _entries(k)
    for what, through, direct in cases:
        assert _result(functools.partial(through, k, mine)) == _result(functools.partial(direct, theirs)), what
        assert _tree(mine) == _tree(theirs), what
    on_lanes = sum("a worker's" not in what for what, _, _ in cases)
    assert _entries(k) - before == on_lanes, "these calls, and no other, are the lane's"

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            loop = asyncio.get_running_loop()
            mine, theirs = _twin_dirs(str(tmp_path), "loop")
            start = lane.entries
            for what, through, direct in cases:
                got = await loop.run_in_executor(None, _result, functools.partial(through, _OnLoop(a, loop), mine))
                assert got == _result(functools.partial(direct, theirs)), what
                assert _tree(mine) == _tree(theirs), what
            assert lane.entries - start == on_lanes, "these calls, and no other, are the loop lane's"

    asyncio.run(main())


class _OnLoop:
    """An asyncio instance's calls made from a worker thread: each runs on the loop (its lane), awaited."""

    def __init__(self, a: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._a, self._loop = a, loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._a, name)

        async def awaited(*args: Any) -> Any:
            return await method(*args)

        return lambda *args: asyncio.run_coroutine_threadsafe(awaited(*args), self._loop).result(5)


def test_a_lane_runs_a_callers_sqe_only_when_it_stays_apart_from_the_lanes_other_entries() -> None:
    from ksvc_host.abi.io_uring import IoringOp, SqeFlag
    from ksvc_host.traits.io_backend import SqeSpec

    nop = SqeSpec(IoringOp.NOP).to_bytes()
    with ksvc.open() as k:
        lane = k._lanes.mine()
        assert lane is not None
        assert lane.call_sqe(None, nop) == 0
        forged = nop[:32] + (12345).to_bytes(8, "little") + nop[40:]  # user_data is the lane's to set
        assert lane.call_sqe(None, forged) == 0 and lane.inflight == 0
        # A link, a provided buffer, a skipped completion: ties to other entries; the caller takes the channel.
        for flag in SqeFlag:
            assert lane.call_sqe(None, SqeSpec(IoringOp.NOP, flags=flag).to_bytes()) is None, flag
        for bad in (nop[:63], nop + b"\0", bytearray(nop), memoryview(nop)):
            with pytest.raises(ValueError, match="64 bytes"):
                lane.call_sqe(None, bad)
        fd = os.open("/dev/zero", os.O_RDONLY)
        try:
            assert lane.call_sqe(None, SqeSpec(IoringOp.CLOSE, fd).to_bytes()) == 0
            assert lane.call_sqe(None, SqeSpec(IoringOp.CLOSE, fd).to_bytes()) == -errno.EBADF
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            futs = [a._loop_lane.new_future() for _ in range(3)]
            tokens = [lane.start_sqe(f, None, nop) for f in futs]
            assert None not in tokens and len(set(tokens)) == 3
            assert lane.start_sqe(futs[0], None, SqeSpec(IoringOp.NOP, flags=SqeFlag.IO_LINK).to_bytes()) is None
            a._loop_lane.soon()
            assert await asyncio.wait_for(asyncio.gather(*futs), 5) == [0, 0, 0]

    asyncio.run(main())


def test_a_cancelled_readv_on_the_loop_lane_loses_nothing() -> None:
    # readv takes the loop's lane with the host's SQE. Cancelled while it waits on an empty pipe, or just as
    # the bytes arrive: either the task is cancelled and the bytes are still in the pipe, or the read won
    # the race and its result (with the bytes in the caller's buffer) is delivered instead.
    async def main() -> None:
        async with ksvc.open_async() as a:
            lane = a._lane
            assert lane is not None
            r, w = os.pipe()
            try:
                start = lane.entries
                for _ in range(10):
                    task = asyncio.ensure_future(a.readv(r, [bytearray(10)]))
                    await asyncio.sleep(0.002)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await asyncio.wait_for(task, 5)
                assert lane.entries - start == 10 and lane.inflight == 0, "the readvs were not the lane's"
                outcomes = {"cancelled": 0, "delivered": 0}
                for i in range(100):
                    buf, msg = bytearray(4), b"%04d" % i
                    task = asyncio.ensure_future(a.readv(r, [buf]))
                    await asyncio.sleep(0)
                    os.write(w, msg)
                    task.cancel()
                    try:
                        n = await asyncio.wait_for(task, 5)
                    except asyncio.CancelledError:
                        outcomes["cancelled"] += 1
                        assert _drain_nonblocking(r) == msg, f"round {i}: cancelled, and the bytes are gone"
                    else:
                        outcomes["delivered"] += 1
                        assert bytes(buf[:n]) == msg[:n] and _drain_nonblocking(r) == msg[n:], i
                assert sum(outcomes.values()) == 100 and lane.inflight == 0, outcomes
            finally:
                os.close(r)
                os.close(w)

    asyncio.run(main())


def _drain_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 100)
    except BlockingIOError:
        return b""
    finally:
        os.set_blocking(fd, True)
