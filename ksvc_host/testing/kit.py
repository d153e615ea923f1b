"""The contract checks, one function per trait (see the package docstring).

Every check runs its body on a daemon thread under a watchdog: each step
(one call into the implementation, or one wait for it to deliver) has a
deadline, :data:`DEADLINE` seconds, and a step that overruns fails the
check with an ``AssertionError`` naming the step and the contract it
breaks, instead of hanging the test run. The stuck thread is left behind
(daemon), with whatever the broken implementation holds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.io_uring import IoringOp
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.traits import (
    AttachableCompletionSink,
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
DEADLINE = 5.0
"""Seconds one step of a check may take (a call, or a wait for the implementation to deliver) before it fails."""
_WAIT_GRACE = 2.0
"""Extra seconds the watchdog gives a step that polls with its own :data:`DEADLINE` (its message is better)."""


class _Steps:
    """Where a check's body is: the step running now, its contract, and when it started.

    Written by the body's thread, read by the watchdog (one tuple: always consistent).
    """

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.now: tuple[str, str, float, float] = ("starting", "a check must end in bounded time", 0.0, 0.0)
        self("starting", "a check must end in bounded time")

    def __call__(self, what: str, contract: str, limit: float | None = None) -> None:
        """Enter step *what*, which must finish within *limit* seconds (:data:`DEADLINE`) as *contract* says."""
        self.now = (what, contract, time.monotonic(), DEADLINE if limit is None else limit)

    def quick(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call *fn*, which must never block."""
        self(what, f"{what} must never block")
        t0 = time.monotonic()
        out = fn()
        took = time.monotonic() - t0
        assert took < _NEVER_BLOCKS, f"{self.subject}: {what} must never block, but took {took:.3f} s"
        return out

    def until(self, pred: Callable[[], bool], what: str, contract: str, timeout: float | None = None) -> None:
        """Poll *pred* until it holds; fail after *timeout* seconds (:data:`DEADLINE`) naming *contract*."""
        timeout = DEADLINE if timeout is None else timeout
        self(f"waiting for {what}", contract, timeout + _WAIT_GRACE)
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, (
                f"{self.subject}: timed out after {timeout:g} s waiting for {what}: {contract}"
            )
            time.sleep(0.001)


def _guarded(steps: _Steps, body: Callable[[], None], diagnose: Callable[[float], str | None] | None = None) -> None:
    """Run *body* on a daemon thread; raise its exception, or ``AssertionError`` when a step overruns.

    *diagnose(seconds)* may name the component at fault when a step overruns.
    """
    failure: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)
        finally:
            finished.set()

    threading.Thread(target=run, name=f"ksvc-kit: {steps.subject}", daemon=True).start()
    while not finished.is_set():
        what, contract, since, limit = steps.now
        left = since + limit - time.monotonic()
        if left > 0:
            finished.wait(min(left, 0.25))
            continue
        detail = None
        if diagnose is not None:
            try:
                detail = diagnose(time.monotonic() - since)
            except Exception:  # noqa: BLE001 - a diagnosis must not hide the overrun
                detail = None
        raise AssertionError(detail or f"{steps.subject}: {what} did not finish within {limit:g} s: {contract}")
    if failure:
        exc = failure[0]
        if isinstance(exc, AssertionError) and not str(exc).startswith(steps.subject):
            raise AssertionError(f"{steps.subject}: {exc}").with_traceback(exc.__traceback__) from None
        raise exc


def _in_background(*fns: Callable[[], Any]) -> None:
    """Release what a failed check built without waiting for it (a broken release must not hide the failure)."""

    def run() -> None:
        for fn in fns:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort
                pass

    threading.Thread(target=run, name="ksvc-kit: release", daemon=True).start()


def _name(obj: Any) -> str:
    return repr(getattr(obj, "name", type(obj).__name__))


def _submitter(be: IoBackend, user_data: int) -> Callable[[], bool]:
    return lambda: be.submit(user_data, SqeSpec(IoringOp.NOP))


def _enqueuer(pool: WorkerPool, token: int, nr: int) -> Callable[[], bool]:
    return lambda: pool.enqueue(token, nr, (0,) * 6)


def check_router(factory: Callable[[], SyscallRouter]) -> None:
    """Routes are total and O(1); refused and unknown numbers are Tier 3; Tier 0 identity reads."""
    steps = _Steps("router")

    def body() -> None:
        steps("factory()", "building a router must not block")
        router = factory()
        steps.subject = f"router {_name(router)}"
        assert isinstance(router, SyscallRouter), "a router needs name, supported_opcodes, route() and table()"
        steps("route()", "route() is a table look-up and must never block")
        for nr in (-1, 2**32 - 1, 10**6):
            assert router.route(nr).tier is Tier.LEGACY, f"unknown number {nr} must route to Tier 3"
        for name in ("fork", "execve", "exit_group", "clone3"):
            assert router.route(NR[name]).tier is Tier.LEGACY, f"{name} must never be offloaded"
        assert router.route(NR["getpid"]).tier is Tier.SHARED_PAGE, "getpid is a Tier 0 identity read"
        steps("table()", "table() must agree with route() and never block")
        for nr, route in router.table().items():
            assert router.route(nr) == route, f"route({nr}) disagrees with table()"
            if route.tier is Tier.IO_URING:
                assert route.opcode in router.supported_opcodes, f"syscall {nr} routed to an unsupported opcode"
        steps("10000 route() calls", "route() must be O(1)")
        t0 = time.perf_counter()
        for _ in range(10000):
            router.route(NR["pread64"])
        assert time.perf_counter() - t0 < 1.0, "route() must be O(1)"

    _guarded(steps, body)


def check_io_backend(factory: Callable[[], IoBackend]) -> None:
    """Submit/flush never block; every SQE completes once; full SQ is back-pressure; cancel; shutdown drains."""
    steps = _Steps("io backend")

    def body() -> None:
        steps("factory()", "building an io backend must not block")
        be = factory()
        steps.subject = f"io backend {_name(be)}"
        assert isinstance(be, IoBackend), "an io backend needs the IoBackend methods"
        r, w = os.pipe()
        buf = native.alloc(8)
        try:
            _io_backend_contract(steps, be, r, buf)
        except BaseException:
            _in_background(be.shutdown, lambda: os.close(r), lambda: os.close(w))
            raise
        steps("shutdown()", "shutdown() must cancel and drain in bounded time", 10.0)
        t0 = time.monotonic()
        be.shutdown()
        assert time.monotonic() - t0 < 10, "shutdown() must cancel and drain in bounded time"
        os.close(r)
        os.close(w)

    _guarded(steps, body)


def _io_backend_contract(steps: _Steps, be: IoBackend, r: int, buf: Any) -> None:
    complete = "every SQE submit() accepted must yield a CQE from poll_completions()"
    assert IoringOp.NOP in steps.quick("probe_opcodes()", be.probe_opcodes)
    accepted = [u for u in range(1, be.capacity * 2 + 1) if steps.quick("submit()", _submitter(be, u))]
    assert 0 < len(accepted) <= be.capacity * 2, "submit() must accept up to capacity and then say no"
    steps.quick("flush()", be.flush)
    got: dict[int, int] = {}

    def reap() -> bool:
        for c in be.poll_completions(1024):
            assert c.user_data not in got, f"SQE {c.user_data} completed twice"
            got[c.user_data] = c.result
        if len(got) < len(accepted):
            be.flush()
        return len(got) == len(accepted)

    steps.until(reap, f"every accepted SQE to complete ({len(accepted)} NOPs)", complete)
    assert set(got) == set(accepted) and all(v == 0 for v in got.values())
    assert be.inflight() == 0, "inflight() must be 0 once everything was reaped"
    steps("submit() and flush() of a read on an empty pipe", "submit() and flush() must never block")
    assert be.submit(10**6, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=2**64 - 1))
    be.flush()
    time.sleep(0.02)
    steps.quick("poll_completions()", lambda: None)
    assert be.poll_completions() == [], "a read on an empty pipe must not complete by itself"
    assert steps.quick("cancel()", lambda: be.cancel(10**6)), "cancel() must accept a request for an in-flight SQE"
    steps.quick("flush()", be.flush)
    late: list[Any] = []

    def reap_late() -> bool:
        late.extend(be.poll_completions())
        return bool(late)

    steps.until(reap_late, "the cancelled read's completion", "a cancelled request must still complete once")
    assert [c.user_data for c in late] == [10**6] and late[0].result in (-errno.ECANCELED, -errno.EINTR)
    assert be.submit(10**6 + 1, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=2**64 - 1))
    be.flush()


def check_worker_pool(factory: Callable[[Callable[[int], bool]], WorkerPool]) -> None:
    """``factory(allowed)``: enqueue never blocks; exactly one completion per job; allowed() is obeyed; drains."""
    allowed = lambda nr: nr != NR["getuid"]  # noqa: E731
    steps = _Steps("worker pool")
    complete = "every job enqueue() accepted must yield one completion from poll_completions()"

    def body() -> None:
        steps("factory(allowed)", "building a worker pool must not block")
        pool = factory(allowed)
        steps.subject = f"worker pool {_name(pool)}"
        assert isinstance(pool, WorkerPool), "a worker pool needs the WorkerPool methods"
        try:
            wakeups: list[int] = []
            steps.quick("set_wakeup()", lambda: pool.set_wakeup(lambda: wakeups.append(1)))
            accepted = [t for t in range(200) if steps.quick("enqueue()", _enqueuer(pool, t, NR["getppid"]))]
            assert accepted, "enqueue() accepted nothing"
            steps.until(lambda: pool.enqueue(10**6, NR["getuid"], (0,) * 6), "room for one more job",
                        "a full queue must drain: jobs run and leave it")  # fmt: skip
            got: dict[int, int] = {}

            def reap() -> bool:
                for token, res in pool.poll_completions(1000):
                    assert token not in got, f"job {token} completed twice"
                    got[token] = res
                return all(t in got for t in [*accepted, 10**6])

            steps.until(reap, f"every job to complete ({len(accepted) + 1} jobs)", complete)
            for t in accepted:
                assert got[t] == os.getppid(), f"job {t} returned {got[t]}"
            assert got[10**6] == -errno.EPERM, "a syscall the router does not allow must complete with -EPERM"
            assert wakeups, "the wake-up callback was never called"
            assert pool.max_workers >= pool.total >= 0 and pool.busy >= 0
            more = [t for t in range(2000, 2050) if pool.enqueue(t, NR["getpid"], (0,) * 6)]
        except BaseException:
            _in_background(lambda: pool.shutdown(wait=False))
            raise
        steps("shutdown(wait=True)", "shutdown() must run what is queued, then stop the threads, in bounded time")
        pool.shutdown(wait=True)
        steps.until(lambda: reap() and all(t in got for t in more), "shutdown() to drain queued jobs",
                    "shutdown() must run every queued job to its completion")  # fmt: skip

    _guarded(steps, body)


def check_notifier(factory: Callable[[], Notifier]) -> None:
    """notify() never blocks; notifications coalesce; wait() consumes; a thread's notify wakes a waiter."""
    steps = _Steps("notifier")

    def body() -> None:
        steps("factory()", "building a notifier must not block")
        n = factory()
        steps.subject = f"notifier {_name(n)}"
        assert isinstance(n, Notifier), "a notifier needs notify, wait, clear, fileno, close"
        try:
            _notifier_contract(steps, n)
        except BaseException:
            _in_background(n.close)
            raise
        steps("close()", "close() must not block")
        n.close()

    _guarded(steps, body)


def _notifier_contract(steps: _Steps, n: Notifier) -> None:
    assert steps.quick("wait(0)", lambda: n.wait(0)) is False, "a fresh notifier has nothing pending"
    for _ in range(1000):
        steps.quick("notify()", n.notify)
    assert n.wait(0) is True and n.wait(0) is False, "1000 notifies must coalesce into one wake-up"
    threading.Timer(0.02, n.notify).start()
    steps("wait(5) while another thread notifies", "a notify from another thread must wake a waiter", 5 + _WAIT_GRACE)
    assert n.wait(5) is True, "a notify from another thread must wake a waiter within 5 s"
    steps.quick("notify()", n.notify)
    steps.quick("clear()", n.clear)
    assert steps.quick("wait(0)", lambda: n.wait(0)) is False, "clear() must consume the pending notification"
    fd = n.fileno()
    if fd is not None:
        import select

        p = select.poll()
        p.register(fd, select.POLLIN)
        n.notify()
        assert p.poll(1000), "fileno() must poll readable while a notification is pending"


def check_completion_sink(factory: Callable[[Any, Notifier], CompletionSink], notifier: Callable[[], Notifier]) -> None:
    """``factory(channel, notifier)``: push until full (False, nothing lost); one notify per flush.

    Nothing lost: every completion ``push()`` accepted reaches the consumer,
    in order, through the channel's completion ring (or, for a sink with
    ``attach(deliver)``, through *deliver*) once it is flushed.
    """
    from ksvc_host.channel import open_channel

    steps = _Steps("completion sink")

    def body() -> None:
        ch = open_channel(16, 16, device="")
        steps("notifier()", "building a notifier must not block")
        n = notifier()
        try:
            steps("factory(channel, notifier)", "building a completion sink must not block")
            sink = factory(ch, n)
            steps.subject = f"completion sink {_name(sink)}"
            _completion_sink_contract(steps, sink, ch, n)
        finally:
            n.close()
            ch.close()

    _guarded(steps, body)


def _completion_sink_contract(steps: _Steps, sink: CompletionSink, ch: Any, n: Notifier) -> None:
    delivered: list[tuple[int, int, int]] = []
    direct = isinstance(sink, AttachableCompletionSink)
    if isinstance(sink, AttachableCompletionSink):
        attachable = sink
        steps.quick("attach()", lambda: attachable.attach(lambda c, r, f: delivered.append((c, r, f))))
    ring = ch.completion_ring

    def consume() -> None:  # the consumer's side: read what the sink published, free the slots
        if not direct:
            head, tail = ring.head, ring.tail
            delivered.extend(tuple(L.COMPLETION_ENTRY.unpack_from(ring.buf, ring.slot_offset(i))[:3])
                             for i in range(head, tail))  # fmt: skip
            ring.publish_head(tail)

    pushed = [i for i in range(40) if steps.quick("push()", partial(sink.push, i, -i, 0))]
    assert pushed == list(range(len(pushed))) and len(pushed) >= 16, "push() must accept in order until full"
    steps.quick("flush_and_notify()", sink.flush_and_notify)
    if not direct:
        assert n.wait(1) is True, "flush_and_notify() must notify"
    consume()
    accepted = list(pushed)

    def retry(i: int) -> bool:  # as the dispatcher does: keep the completion, flush, try again once there is room
        if sink.push(i, -i, 0):
            return True
        sink.flush_and_notify()
        consume()
        return False

    for i in range(len(pushed), 40):
        steps.until(partial(retry, i), f"push({i}) to be accepted after the consumer emptied the ring",
                    "push() may refuse only while the consumer has not made room")  # fmt: skip
        accepted.append(i)
        if (i + 1) % 8 == 0:
            steps.quick("flush_and_notify()", sink.flush_and_notify)
            consume()
    steps.quick("flush_and_notify()", sink.flush_and_notify)
    consume()
    want = [(i, -i, 0) for i in accepted]
    assert delivered == want, (
        f"{steps.subject}: push() accepted {len(accepted)} completions, but after flush_and_notify() "
        f"{len(delivered)} reached the consumer ({_first_difference(delivered, want)}): push() must not drop "
        "completions (it returns False when full), and flush_and_notify() must publish every one it accepted"
    )


def _first_difference(got: list[tuple[int, int, int]], want: list[tuple[int, int, int]]) -> str:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"entry {i} is {g}, expected {w}"
    return f"first missing: {want[len(got)]}" if len(got) < len(want) else f"unexpected extra: {got[len(want)]}"


def check_buffer_provider(factory: Callable[[], BufferProvider]) -> None:
    """acquire() never blocks; buffers are distinct, writable and sized; in_use counts; release works."""
    steps = _Steps("buffer provider")

    def body() -> None:
        steps("factory()", "building a buffer provider must not block")
        bp = factory()
        steps.subject = f"buffer provider {_name(bp)}"
        assert isinstance(bp, BufferProvider), (
            "a buffer provider needs acquire, release, is_registered, pool_size, in_use"
        )
        handles = []
        for i in range(8):
            h = steps.quick("acquire()", lambda: bp.acquire(4096))
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
            steps.quick("release()", partial(bp.release, h))
        assert bp.in_use == 0

    _guarded(steps, body)


def check_shared_page(factory: Callable[[Any], SharedPage]) -> None:
    """``factory(channel)``: identity fields equal the direct syscalls."""
    from ksvc_host.channel import open_channel

    steps = _Steps("shared page")

    def body() -> None:
        ch = open_channel(16, 16, device="")
        try:
            steps("factory(channel)", "building a shared page must not block")
            page = factory(ch)
            steps.subject = f"shared page {_name(page)}"
            assert isinstance(page, SharedPage), "a shared page needs every identity field"
            steps("reading the identity fields", "a shared page field is a memory read and must never block")
            direct = (os.getpid(), os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0), os.getuid(), os.getgid(),
                      os.geteuid(), os.getegid())  # fmt: skip
            got = (page.pid, page.tgid, page.ppid, page.pgid, page.sid, page.uid, page.gid, page.euid, page.egid)
            assert got == direct, f"shared page {got} != direct {direct}"
            assert page.field("magic") == L.SHARED_PAGE_MAGIC
        finally:
            ch.close()

    _guarded(steps, body)


def check_instance(**selection: Any) -> None:
    """A whole stack, selected by name: differential reads and writes against ``os.*``, all tiers.

    The blocking front end, then the asyncio one (whose event loop learns
    of a completion it did not reap itself only through the notifier or
    the completion sink). A call that does not return within :data:`DEADLINE` fails the check,
    naming the component whose contract the stack's state points at
    (a completion published but nobody woken: the notifier; an SQE or a
    job that never completed: the io backend or the worker pool; a
    completion that never reached the ring: the completion sink).
    """
    label = ", ".join(f"{key}={value!r}" for key, value in selection.items() if key != "plugins")
    steps = _Steps(f"instance({label})")
    held: dict[str, Any] = {}

    def body() -> None:
        import ksvc_host

        with tempfile.NamedTemporaryFile() as f:
            steps("ksvc_host.open()", "building and starting a stack must not block")
            k = held["k"] = ksvc_host.open(**selection)
            _instance_contract(steps, k, f)
            steps("closing the instance", "close() must drain and stop in bounded time")
            k.close()
            asyncio.run(_async_contract(steps, held, selection, f.name))

    _guarded(steps, body, lambda seconds: _diagnose_instance(held.get("k"), seconds))


async def _async_contract(steps: _Steps, held: dict[str, Any], selection: dict[str, Any], path: str) -> None:
    import fcntl

    import ksvc_host

    every = "every call must complete"
    steps("ksvc_host.open_async()", "building and starting a stack must not block")
    async with ksvc_host.open_async(**selection) as k:
        held["k"] = k
        steps("await k.open() (Tier 1)", every)
        fd = await k.open(path, os.O_RDWR)
        steps("await k.pread() (Tier 1)", every)
        assert await k.pread(fd, 4096, 1) == os.pread(fd, 4096, 1), "await k.pread differs from os.pread"
        steps("await k.fcntl() (Tier 2)", every)
        assert await k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(fd, fcntl.F_GETFL)
        # A worker busy for a while: the loop's own turns are over by the time it completes, so only the
        # notifier (or the sink's direct delivery) can tell the loop.
        steps("await k.syscall(poll, NULL, 0, 20 ms) (Tier 2)", every)
        assert await k.syscall(NR["poll"], 0, 0, 20) == 0
        steps("await k.pread_many() (a bulk)", every)
        offsets = [i * 512 for i in range(16)]
        assert await k.pread_many(fd, 512, offsets) == [os.pread(fd, 512, o) for o in offsets]
        steps("await k.close(fd)", every)
        await k.close(fd)
        steps("closing the asyncio instance", "aclose() must drain and stop in bounded time")


def _instance_contract(steps: _Steps, k: Any, f: Any) -> None:
    import fcntl

    every = "every call must complete"
    data = os.urandom(1 << 16)
    f.write(data)
    f.flush()
    steps("k.open() (Tier 1)", every)
    fd = k.open(f.name, os.O_RDWR)
    for off in (0, 1, 4095, 4096, 60000):
        steps(f"k.pread(fd, 4096, {off}) (Tier 1)", every)
        assert k.pread(fd, 4096, off) == os.pread(fd, 4096, off), f"pread at {off} differs from os.pread"
    steps("k.pwrite() (Tier 1)", every)
    assert k.pwrite(fd, b"ksvc", 100) == 4 and os.pread(fd, 4, 100) == b"ksvc"
    buf = bytearray(4096)
    steps("k.preadinto() (Tier 1)", every)
    assert k.preadinto(fd, buf, 8192) == 4096 and bytes(buf) == os.pread(fd, 4096, 8192)
    steps("k.fcntl() (Tier 2)", every)
    assert k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(fd, fcntl.F_GETFL)
    steps("k.getpid() (Tier 0)", "a Tier 0 read must never block")
    assert k.getpid() == os.getpid()
    b = k.batch()
    for i in range(64):
        b.pread(fd, 512, i * 512)
    steps("a batch of 64 preads", every)
    assert b.run() == [os.pread(fd, 512, i * 512) for i in range(64)]
    steps("k.close(fd)", every)
    k.close(fd)


def _diagnose_instance(k: Any, seconds: float) -> str | None:
    """Which component the state of a stuck stack points at, as a sentence naming its contract."""
    if k is None:
        return None
    inst = k.instance
    if inst.channel.closed:
        return None
    names = inst.selection.names
    waited = f"{seconds:.1f} s"
    disp = inst.dispatcher
    cring = inst.channel.completion_ring
    unread = cring.check(cring.head, cring.tail)
    if unread and disp.mode == "thread":
        return (f"notifier {names['notifier']!r}: no notification within {waited} of a completion "
                f"({unread} published in the completion ring, never read): notify() must wake wait()")  # fmt: skip
    if unread:
        return (f"{unread} completion(s) published in the completion ring were never read by the waiting caller "
                f"within {waited} (inline dispatcher)")  # fmt: skip
    if disp.has_overflow:
        return (f"completion sink {names['completion_sink']!r}: push() refused completions for {waited} while the "
                "consumer kept up: push() may return False only while there is no room")  # fmt: skip
    inflight = inst.io_backend.inflight()
    if inflight:
        return (f"io backend {names['io_backend']!r}: {inflight} SQE(s) accepted by submit() did not complete "
                f"within {waited}: every accepted SQE must yield a CQE from poll_completions()")  # fmt: skip
    jobs = inst.worker_pool.pending()
    if jobs:
        return (f"worker pool {names['worker_pool']!r}: {jobs} job(s) accepted by enqueue() did not complete "
                f"within {waited}: every accepted job must yield one completion from poll_completions()")  # fmt: skip
    queued = inst.channel.submit_ring.used()
    if queued or not disp.idle():
        return (f"the dispatcher has held work for {waited} that no tier accepted ({queued} entries still in the "
                f"submit ring): io backend {names['io_backend']!r} submit() and worker pool "
                f"{names['worker_pool']!r} enqueue() may refuse only while full")  # fmt: skip
    from ksvc_host.frontend.blocking import Ksvc

    pending = k.raw.pending() if isinstance(k, Ksvc) else k._completer.pending_count()
    if pending:
        return (f"completion sink {names['completion_sink']!r}: {pending} call(s) finished by their tier but their "
                f"completion did not reach the caller within {waited}: push() must not drop a completion it "
                "accepted, and flush_and_notify() must publish it")  # fmt: skip
    return None
