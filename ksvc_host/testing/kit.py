"""The contract checks, one function per trait (see the package docstring)."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.io_uring import IoringOp
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.traits import (
    BufferProvider,
    CompletionSink,
    IoBackend,
    Notifier,
    SharedPage,
    SyscallRouter,
    Tier,
    WorkerPool,
)
from ksvc_host.traits.io_backend import SqeSpec

NR = SYSCALLS
_NEVER_BLOCKS = 0.5
"""Seconds a call that must not block may take before it counts as blocking (generous for slow CI)."""


def _quick(what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    out = fn()
    took = time.monotonic() - t0
    assert took < _NEVER_BLOCKS, f"{what} must never block, but took {took:.3f} s"
    return out


def _until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _submitter(be: IoBackend, user_data: int) -> Callable[[], bool]:
    return lambda: be.submit(user_data, SqeSpec(IoringOp.NOP))


def _enqueuer(pool: WorkerPool, token: int, nr: int) -> Callable[[], bool]:
    return lambda: pool.enqueue(token, nr, (0,) * 6)


def check_router(factory: Callable[[], SyscallRouter]) -> None:
    """Routes are total and O(1); refused and unknown numbers are Tier 3; Tier 0 identity reads."""
    router = factory()
    assert isinstance(router, SyscallRouter), "a router needs name, supported_opcodes, route() and table()"
    for nr in (-1, 2**32 - 1, 10**6):
        assert router.route(nr).tier is Tier.LEGACY, f"unknown number {nr} must route to Tier 3"
    for name in ("fork", "execve", "exit_group", "clone3"):
        assert router.route(NR[name]).tier is Tier.LEGACY, f"{name} must never be offloaded"
    assert router.route(NR["getpid"]).tier is Tier.SHARED_PAGE, "getpid is a Tier 0 identity read"
    for nr, route in router.table().items():
        assert router.route(nr) == route, f"route({nr}) disagrees with table()"
        if route.tier is Tier.IO_URING:
            assert route.opcode in router.supported_opcodes, f"syscall {nr} routed to an unsupported opcode"
    t0 = time.perf_counter()
    for _ in range(10000):
        router.route(NR["pread64"])
    assert time.perf_counter() - t0 < 1.0, "route() must be O(1)"


def check_io_backend(factory: Callable[[], IoBackend]) -> None:
    """Submit/flush never block; every SQE completes once; full SQ is back-pressure; cancel; shutdown drains."""
    be = factory()
    assert isinstance(be, IoBackend), "an io backend needs the IoBackend methods"
    r, w = os.pipe()
    buf = native.alloc(8)
    try:
        assert IoringOp.NOP in _quick("probe_opcodes()", be.probe_opcodes)
        accepted = [u for u in range(1, be.capacity * 2 + 1) if _quick("submit()", _submitter(be, u))]
        assert 0 < len(accepted) <= be.capacity * 2, "submit() must accept up to capacity and then say no"
        _quick("flush()", be.flush)
        got: dict[int, int] = {}

        def reap() -> bool:
            for c in be.poll_completions(1024):
                assert c.user_data not in got, f"SQE {c.user_data} completed twice"
                got[c.user_data] = c.result
            if len(got) < len(accepted):
                be.flush()
            return len(got) == len(accepted)

        _until(reap, "every accepted SQE to complete")
        assert set(got) == set(accepted) and all(v == 0 for v in got.values())
        assert be.inflight() == 0, "inflight() must be 0 once everything was reaped"
        assert be.submit(10**6, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=2**64 - 1))
        be.flush()
        time.sleep(0.02)
        assert be.poll_completions() == [], "a read on an empty pipe must not complete by itself"
        assert be.cancel(10**6), "cancel() must accept a request for an in-flight SQE"
        be.flush()
        late: list[Any] = []

        def reap_late() -> bool:
            late.extend(be.poll_completions())
            return bool(late)

        _until(reap_late, "the cancelled read's completion")
        assert [c.user_data for c in late] == [10**6] and late[0].result in (-errno.ECANCELED, -errno.EINTR)
        assert be.submit(10**6 + 1, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=2**64 - 1))
        be.flush()
    finally:
        t0 = time.monotonic()
        be.shutdown()
        assert time.monotonic() - t0 < 10, "shutdown() must cancel and drain in bounded time"
        os.close(r)
        os.close(w)


def check_worker_pool(factory: Callable[[Callable[[int], bool]], WorkerPool]) -> None:
    """``factory(allowed)``: enqueue never blocks; exactly one completion per job; allowed() is obeyed; drains."""
    allowed = lambda nr: nr != NR["getuid"]  # noqa: E731
    pool = factory(allowed)
    assert isinstance(pool, WorkerPool), "a worker pool needs the WorkerPool methods"
    wakeups: list[int] = []
    pool.set_wakeup(lambda: wakeups.append(1))
    accepted = [t for t in range(200) if _quick("enqueue()", _enqueuer(pool, t, NR["getppid"]))]
    assert accepted, "enqueue() accepted nothing"
    _until(lambda: pool.enqueue(10**6, NR["getuid"], (0,) * 6), "room for one more job")
    got: dict[int, int] = {}

    def reap() -> bool:
        for token, res in pool.poll_completions(1000):
            assert token not in got, f"job {token} completed twice"
            got[token] = res
        return all(t in got for t in [*accepted, 10**6])

    _until(reap, "every job to complete")
    for t in accepted:
        assert got[t] == os.getppid(), f"job {t} returned {got[t]}"
    assert got[10**6] == -errno.EPERM, "a syscall the router does not allow must complete with -EPERM"
    assert wakeups, "the wake-up callback was never called"
    assert pool.max_workers >= pool.total >= 0 and pool.busy >= 0
    more = [t for t in range(2000, 2050) if pool.enqueue(t, NR["getpid"], (0,) * 6)]
    pool.shutdown(wait=True)
    _until(lambda: reap() and all(t in got for t in more), "shutdown() to drain queued jobs")


def check_notifier(factory: Callable[[], Notifier]) -> None:
    """notify() never blocks; notifications coalesce; wait() consumes; a thread's notify wakes a waiter."""
    n = factory()
    assert isinstance(n, Notifier), "a notifier needs notify, wait, clear, fileno, close"
    try:
        assert n.wait(0) is False, "a fresh notifier has nothing pending"
        for _ in range(1000):
            _quick("notify()", n.notify)
        assert n.wait(0) is True and n.wait(0) is False, "1000 notifies must coalesce into one wake-up"
        threading.Timer(0.02, n.notify).start()
        assert n.wait(5) is True, "a notify from another thread must wake a waiter"
        n.notify()
        n.clear()
        assert n.wait(0) is False, "clear() must consume the pending notification"
        fd = n.fileno()
        if fd is not None:
            import select

            p = select.poll()
            p.register(fd, select.POLLIN)
            n.notify()
            assert p.poll(1000), "fileno() must poll readable while a notification is pending"
    finally:
        n.close()


def check_completion_sink(factory: Callable[[Any, Notifier], CompletionSink], notifier: Callable[[], Notifier]) -> None:
    """``factory(channel, notifier)``: push until full (False, nothing lost); one notify per flush."""
    from ksvc_host.channel import open_channel

    ch = open_channel(16, 16, device="")
    n = notifier()
    sink = factory(ch, n)
    try:
        pushed = [i for i in range(40) if sink.push(i, -i, 0)]
        assert pushed == list(range(len(pushed))) and len(pushed) >= 16, "push() must accept in order until full"
        sink.flush_and_notify()
        assert n.wait(1) is True, "flush_and_notify() must notify"
    finally:
        n.close()
        ch.close()


def check_buffer_provider(factory: Callable[[], BufferProvider]) -> None:
    """acquire() never blocks; buffers are distinct, writable and sized; in_use counts; release works."""
    bp = factory()
    assert isinstance(bp, BufferProvider), "a buffer provider needs acquire, release, is_registered, pool_size, in_use"
    handles = []
    for i in range(8):
        h = _quick("acquire()", lambda: bp.acquire(4096))
        if h is None:
            break
        assert h.size >= 4096, "acquire(n) must give at least n bytes"
        h.view(4096)[:] = bytes([i]) * 4096
        handles.append(h)
    assert handles, "acquire(4096) gave nothing"
    assert bp.in_use == len(handles)
    for i, h in enumerate(handles):
        assert bytes(h.view(4096)) == bytes([i]) * 4096, "buffers overlap"
    for h in handles:
        bp.release(h)
    assert bp.in_use == 0


def check_shared_page(factory: Callable[[Any], SharedPage]) -> None:
    """``factory(channel)``: identity fields equal the direct syscalls."""
    from ksvc_host.channel import open_channel

    ch = open_channel(16, 16, device="")
    try:
        page = factory(ch)
        assert isinstance(page, SharedPage), "a shared page needs every identity field"
        direct = (os.getpid(), os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0), os.getuid(), os.getgid(),
                  os.geteuid(), os.getegid())  # fmt: skip
        got = (page.pid, page.tgid, page.ppid, page.pgid, page.sid, page.uid, page.gid, page.euid, page.egid)
        assert got == direct, f"shared page {got} != direct {direct}"
        assert page.field("magic") == L.SHARED_PAGE_MAGIC
    finally:
        ch.close()


def check_instance(**selection: Any) -> None:
    """A whole stack, selected by name: differential reads and writes against ``os.*``, all tiers."""
    import fcntl

    import ksvc_host

    data = os.urandom(1 << 16)
    with tempfile.NamedTemporaryFile() as f, ksvc_host.open(**selection) as k:
        f.write(data)
        f.flush()
        fd = k.open(f.name, os.O_RDWR)
        for off in (0, 1, 4095, 4096, 60000):
            assert k.pread(fd, 4096, off) == os.pread(fd, 4096, off), f"pread at {off} differs from os.pread"
        assert k.pwrite(fd, b"ksvc", 100) == 4 and os.pread(fd, 4, 100) == b"ksvc"
        buf = bytearray(4096)
        assert k.preadinto(fd, buf, 8192) == 4096 and bytes(buf) == os.pread(fd, 4096, 8192)
        assert k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(fd, fcntl.F_GETFL)
        assert k.getpid() == os.getpid()
        b = k.batch()
        for i in range(64):
            b.pread(fd, 512, i * 512)
        assert b.run() == [os.pread(fd, 512, i * 512) for i in range(64)]
        k.close(fd)
