"""lane.c against its pure-Python twin (ksvc_basic.lane_reference) and against ``os``: the same calls,
the same results, errors, refusals and callback order. Every wait is bounded."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from ksvc_basic import lane_reference
from ksvc_basic.translation import CALLS

from ksvc_host.abi.syscalls import SYSCALLS as NR

try:
    from ksvc_basic import _lane as native_lane  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - not built
    native_lane = None

pytestmark = pytest.mark.timeout(60)
IMPLS = [pytest.param(native_lane, id="native", marks=pytest.mark.skipif(native_lane is None, reason="not built")),
         pytest.param(lane_reference, id="twin")]  # fmt: skip


def _build(module: ModuleType, **kw: Any) -> Any:
    lane = module.Lane(kw.pop("entries", 64), 0, kw.pop("settle_s", 1.0), kw.pop("slots", 256))
    for name, (opcode, kind) in CALLS.items():
        lane.route(NR[name], int(opcode), module.KINDS[kind])
    return lane


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    if native_lane is None:
        pytest.skip("the compiled lane is not built")
    a, b = _build(native_lane), _build(lane_reference)
    yield a, b
    assert a.close() and b.close()


@pytest.fixture
def data(tmp_path: Any) -> Iterator[tuple[int, bytes, str]]:
    payload = os.urandom(1 << 15)
    path = os.path.join(str(tmp_path), "data")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, payload)
    yield fd, payload, path
    os.close(fd)


def _errno_of(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as exc:
        return ("OSError", type(exc).__name__, exc.errno)


def test_tables_are_the_same() -> None:
    assert native_lane is None or (lane_reference.KINDS == native_lane.KINDS
                                   and lane_reference.CONSTANTS == native_lane.CONSTANTS)  # fmt: skip


def test_blocking_reads_and_writes_equal_os(pair: tuple[Any, Any], data: tuple[int, bytes, str]) -> None:
    fd, payload, _ = data
    for off, n in ((0, 4096), (8191, 100), (len(payload) - 3, 10), (len(payload) + 5, 10), (7, 0)):
        want = os.pread(fd, n, off)
        assert [lane.read(NR["pread64"], fd, n, off) for lane in pair] == [want, want]
        assert [lane.read_many(NR["pread64"], fd, n, [off, 0]) for lane in pair] == [[want, payload[:n]]] * 2
    for lane, at in zip(pair, (100, 200), strict=True):
        assert lane.write(NR["pwrite64"], fd, b"abc", at) == 3 and os.pread(fd, 3, at) == b"abc"
        assert lane.write(NR["pwrite64"], fd, memoryview(b"xyzw")[1:], at) == 3 and os.pread(fd, 3, at) == b"yzw"
    r, w = os.pipe()
    try:
        for lane in pair:
            assert lane.write(NR["write"], w, bytearray(b"hello"), 0) == 5
            assert lane.read(NR["read"], r, 3, 0) == b"hel" and lane.read(NR["read"], r, 100, 0) == b"lo"
        os.close(w)
        w = -1
        assert [lane.read(NR["read"], r, 10, 0) for lane in pair] == [b"", b""]  # end of file
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    a, b = socket.socketpair()
    try:
        for lane in pair:
            assert lane.write(NR["sendto"], a.fileno(), b"ping", 0) == 4
            assert lane.read(NR["recvfrom"], b.fileno(), 2, socket.MSG_PEEK) == b"pi"
            assert lane.read(NR["recvfrom"], b.fileno(), 10, 0) == b"ping"
    finally:
        a.close()
        b.close()


def test_raw_calls_and_errors_equal_os(pair: tuple[Any, Any], data: tuple[int, bytes, str], tmp_path: Any) -> None:
    fd, _, path = data
    cpath = os.fsencode(path) + b"\0"
    from ksvc_host import native

    addr = native.address_of(cpath)
    for lane in pair:
        g = lane.call(NR["openat"], -100, addr, os.O_RDONLY, 0)
        assert g >= 0 and os.pread(g, 4, 0) == os.pread(fd, 4, 0)
        assert lane.call(NR["fsync"], fd) == 0 and lane.call(NR["fdatasync"], fd) == 0
        assert lane.call(NR["close"], g) == 0
        assert lane.call(NR["close"], g) == -errno.EBADF
        missing = native.address_of(b"/nonexistent/x\0")
        assert lane.call(NR["openat"], -100, missing, os.O_RDONLY, 0) == -errno.ENOENT
    r, w = os.pipe()
    os.close(w)
    try:
        wo = os.open(path, os.O_WRONLY)
        for m in pair:
            assert _errno_of(lambda m=m: m.read(NR["read"], 10_000, 1, 0)) == _errno_of(lambda: os.read(10_000, 1))
            assert _errno_of(lambda m=m: m.write(NR["write"], r, b"x", 0)) == _errno_of(lambda: os.write(r, b"x"))
            assert _errno_of(lambda m=m: m.read(NR["pread64"], wo, 1, 0)) == _errno_of(lambda: os.pread(wo, 1, 0))
        os.close(wo)
        for lane in pair:
            assert lane.read(NR["pread64"], r, 10, 0) is None  # a pipe: ESPIPE is the generic path's
            assert lane.read(NR["pread64"], fd, 10, -1) is None  # EINVAL: the generic path's
            assert lane.read(NR["pread64"], fd, 1.5, 0) is None  # type: ignore[arg-type]
            assert lane.read(NR["pread64"], fd, 1, 1 << 64) is None
            assert lane.read(NR["getpid"], fd, 1, 0) is None  # not routed
            assert lane.call(NR["getpid"]) is None
            assert lane.write(NR["write"], r, "text", 0) is None  # no buffer: the generic path raises os's error
            assert lane.read_many(NR["pread64"], fd, 4, [0, -1]) is None
            assert lane.read_many(NR["read"], fd, 4, [0]) is None
            with pytest.raises(TypeError):
                lane.call()
            with pytest.raises(TypeError):
                lane.read_many(NR["pread64"], fd, 4)
            with pytest.raises(ValueError):
                lane.route(512, 0, 1)
    finally:
        os.close(r)
    rn, wn = os.pipe()
    os.set_blocking(rn, False)
    try:
        assert [lane.read(NR["read"], rn, 10, 0) for lane in pair] == [None, None]  # nonblocking: EAGAIN at once
    finally:
        os.close(rn)
        os.close(wn)


def test_getters_and_refusals_match(pair: tuple[Any, Any], data: tuple[int, bytes, str]) -> None:
    fd, payload, _ = data
    for lane in pair:
        assert lane.mine and not lane.dead and lane.inflight == 0 and lane.queued == 0 and lane.fileno >= 0
        before = (lane.entries, lane.enters)
        lane.read(NR["pread64"], fd, 10, 0)
        assert lane.entries == before[0] + 1 and lane.enters > before[1]
        seen: list[Any] = []

        def other(lane: Any = lane, seen: list[Any] = seen) -> None:
            seen.append((lane.mine, lane.read(NR["pread64"], fd, 1, 0)))

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        assert seen == [(False, None)]  # another thread's lane: not taken
        lane.closing(time.monotonic() + 10)
        assert lane.read(NR["pread64"], fd, 10, 0) is None  # closing: new calls refused
    with pytest.raises(ValueError):
        lane_reference.Lane(64, 0, 1.0, 3)
    if native_lane is not None:
        with pytest.raises(ValueError):
            native_lane.Lane(64, 0, 1.0, 3)


class _Fut:
    """What the loop lane resolves: a record of set_result/set_exception."""

    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled
        self.got: list[Any] = []

    def set_result(self, v: Any) -> None:
        if self.cancelled:
            raise RuntimeError("cancelled")
        self.got.append(("result", v))

    def set_exception(self, e: BaseException) -> None:
        if self.cancelled:
            raise RuntimeError("cancelled")
        self.got.append(("exception", type(e).__name__, getattr(e, "errno", None)))


def _turn_until(lane: Any, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, "the lane did not answer"
        lane.turn()
        time.sleep(0.001)


def test_loop_entries_resolve_alike(pair: tuple[Any, Any], data: tuple[int, bytes, str]) -> None:
    fd, payload, _ = data
    outcomes = []
    for lane in pair:
        futs = [_Fut() for _ in range(6)]
        assert lane.start_read(futs[0], NR["pread64"], fd, 10, 5) is not None
        assert lane.start_write(futs[1], NR["pwrite64"], fd, b"zz", 1000) is not None
        assert lane.start(futs[2], None, NR["close"], 10_000) is not None
        assert lane.start_read(futs[3], NR["read"], 10_000, 4, 0) is not None
        assert lane.start_read_many(futs[4], NR["pread64"], fd, 8, [0, 16, 1 << 20, -1]) == 3
        assert lane.queued == 7
        _turn_until(lane, lambda futs=futs: all(f.got for f in futs[:5]))
        assert lane.inflight == 0
        outcomes.append([f.got for f in futs[:5]])
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == [("result", payload[5:15])]
    assert outcomes[1][2] == [("result", -errno.EBADF)] and outcomes[1][3] == [("exception", "OSError", errno.EBADF)]


def test_the_answer_to_a_future_cancelled_on_its_own_is_let_go_alike(pair: tuple[Any, Any]) -> None:
    """Not a settling waiter: the kernel's answer finds the future cancelled and frees the slot (the read
    took the bytes; a front end's waiters settle instead, see test_waiter.py)."""
    got = []
    for lane in pair:
        r, w = os.pipe()
        try:
            os.write(w, b"abc")
            fut = _Fut(cancelled=True)
            assert lane.start_read(fut, NR["read"], r, 10, 0) is not None
            _turn_until(lane, lambda lane=lane: lane.inflight == 0)
            os.write(w, b"d")
            got.append((fut.got, os.read(r, 10)))
        finally:
            os.close(r)
            os.close(w)
    assert got[0] == got[1] == ([], b"d")


def test_receive_send_and_accept_loops_call_back_in_the_same_order(pair: tuple[Any, Any]) -> None:
    logs = []
    for lane in pair:
        log: list[Any] = []
        a, b = socket.socketpair()
        try:
            token = lane.receive(lambda d, log=log: log.append(("data", d)),
                                 lambda why, log=log: log.append(("end", why)), b.fileno(), 1024)  # fmt: skip
            assert token is not None
            lane.turn(False)
            for chunk in (b"one", b"two"):
                a.sendall(chunk)
                _turn_until(lane, lambda log=log, chunk=chunk: ("data", chunk) in log)
            s = lane.send(lambda res, log=log: log.append(("sent", res)), b.fileno(), b"back", 0)
            assert s is not None
            _turn_until(lane, lambda lane=lane: lane.inflight == 1)  # a quiet send that went out whole: no callback
            assert a.recv(10) == b"back"
            s = lane.send(lambda res, log=log: log.append(("sent", res)), b.fileno(), b"watched", 0)
            assert lane.watch(s)
            _turn_until(lane, lambda log=log: ("sent", 7) in log)
            a.shutdown(socket.SHUT_WR)
            _turn_until(lane, lambda log=log: ("end", 0) in log)
            assert lane.stop(token) is False and lane.inflight == 0
        finally:
            a.close()
            b.close()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        try:
            conns: list[int] = []
            t = lane.accept_loop(conns.append, lambda why, log=log: log.append(("accept-end", why)), srv.fileno(),
                                 os.O_CLOEXEC)  # fmt: skip
            if t is not None:  # kernels from 6.0
                lane.turn(False)
                peers = [socket.create_connection(srv.getsockname()) for _ in range(3)]
                _turn_until(lane, lambda conns=conns: len(conns) == 3)
                assert lane.cancel(t)
                _turn_until(lane, lambda log=log: any(e[0] == "accept-end" for e in log))
                log.append(("accepted", len(conns)))
                for c in conns:
                    os.close(c)
                for p in peers:
                    p.close()
        finally:
            srv.close()
        logs.append(log)
    assert logs[0] == logs[1]
    assert logs[1][:3] == [("data", b"one"), ("data", b"two"), ("sent", 7)]


def test_an_exception_in_on_data_ends_the_loop_with_it(pair: tuple[Any, Any]) -> None:
    whys = []
    for lane in pair:
        a, b = socket.socketpair()
        try:
            ends: list[Any] = []

            def boom(data: bytes) -> None:
                raise ValueError(data)

            assert lane.receive(boom, ends.append, b.fileno(), 1024) is not None
            lane.turn(False)
            a.sendall(b"x")
            _turn_until(lane, lambda ends=ends: bool(ends))
            whys.append((type(ends[0]).__name__, ends[0].args, lane.inflight))
        finally:
            a.close()
            b.close()
    assert whys[0] == whys[1] == ("ValueError", (b"x",), 0)


@pytest.mark.parametrize("module", IMPLS)
def test_a_signal_mid_call_runs_the_handler_and_keeps_the_entry_settled(module: ModuleType) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    lane = _build(module)
    r, w = os.pipe()

    class Stop(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Stop

    old = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(Stop):
            lane.read(NR["read"], r, 10, 0)
        assert time.monotonic() - t0 < 3
        late = lane.take_late()
        assert late == (r, -errno.ECANCELED, None) and lane.take_late() is None
        assert lane.inflight == 0 and not lane.dead
        os.write(w, b"after")
        assert lane.read(NR["read"], r, 10, 0) == b"after", "the cancelled read took bytes written later"
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C: Python's default handler, mid-call
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            lane.read(NR["read"], r, 10, 0)
        assert lane.take_late() == (r, -errno.ECANCELED, None) and lane.inflight == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)
        os.close(r)
        os.close(w)
        assert lane.close()


@pytest.mark.parametrize("module", IMPLS)
def test_closing_cancels_a_waiting_call_at_the_deadline(module: ModuleType) -> None:
    lane = _build(module)
    r, w = os.pipe()
    out: list[Any] = []
    ready = threading.Event()

    def run() -> None:
        mine = _build(module)
        out.append(mine)
        ready.set()
        try:
            out.append(mine.read(NR["read"], r, 5, 0))
        except OSError as exc:
            out.append(exc.errno)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    time.sleep(0.05)
    assert out[0].close() is False  # a call waits in it
    out[0].closing(time.monotonic() + 0.05)
    t.join(5)
    assert out[1] == errno.ECANCELED and out[0].close()
    os.close(r)
    os.close(w)
    assert lane.close()


@pytest.mark.parametrize("module", IMPLS)
def test_forget_drops_the_ring_without_touching_it(module: ModuleType, data: tuple[int, bytes, str]) -> None:
    fd, payload, _ = data
    lane = _build(module)
    assert lane.read(NR["pread64"], fd, 4, 0) == payload[:4]
    ring = lane.fileno
    lane.forget()
    assert lane.dead and lane.fileno == -1 and lane.read(NR["pread64"], fd, 4, 0) is None and lane.turn() == 0
    os.close(ring)  # the host closes the descriptor


def test_rw_many_into_and_from_one_buffer_equals_os(pair: tuple[Any, Any], data: tuple[int, bytes, str]) -> None:
    fd, payload, _ = data
    offs = [0, 4096, len(payload) - 10, len(payload) + 5] + [(i * 977) % len(payload) for i in range(300)]
    size = 64
    want = [os.pread(fd, size, o) for o in offs]
    for lane in pair:
        buf = bytearray(b"\xee" * (size * len(offs)))
        counts = lane.rw_many(NR["pread64"], fd, buf, size, offs)
        assert counts == [len(w) for w in want], "byte counts as os.pread gives them (short reads included)"
        assert all(buf[i * size : i * size + len(w)] == w for i, w in enumerate(want))
        assert buf[2 * size + 10 : 3 * size] == b"\xee" * (size - 10), "past a short read the buffer is untouched"
    for lane, at in zip(pair, (1000, 3000), strict=True):
        block = os.urandom(8 * 16)
        assert lane.rw_many(NR["pwrite64"], fd, memoryview(block), 16, [at + 100 * i for i in range(8)]) == [16] * 8
        assert [os.pread(fd, 16, at + 100 * i) for i in range(8)] == [block[16 * i : 16 * i + 16] for i in range(8)]
    r, w = os.pipe()
    try:
        refused = [
            (NR["pread64"], r, bytearray(8), 4, [0]),  # a pipe: os.pread says ESPIPE, the generic path too
            (NR["pread64"], fd, bytearray(8), 4, [0, -1]),  # a negative offset: EINVAL from the generic path
            (NR["pread64"], fd, b"read-only", 4, [0]),  # a read needs a writable buffer
            (NR["pread64"], fd, bytearray(7), 4, [0, 4]),  # too small for two reads of 4
            (NR["read"], fd, bytearray(8), 4, [0]),  # not a positioned call
            (NR["pread64"], 1 << 20, bytearray(8), 4, [0]),  # not open: lseek fails, the generic path says EBADF
        ]
        for args in refused:
            assert [lane.rw_many(*args) for lane in pair] == [None, None], args
    finally:
        os.close(r)
        os.close(w)
