"""Concurrency and faults the way programs meet them: one instance shared by threads with calls pending,
signals, garbage collection, cancellation, fork, close with a call stuck in the kernel, bad arguments.

Every scenario is bounded, so a regression fails instead of hanging the run:

- In-process scenarios run on a daemon thread under a :class:`Watch`: each step (a call, or a wait for
  another thread) has a deadline, and a step that overruns fails the test naming what hung. A scenario
  that hung leaves its instance and threads behind, untouched (closing under a stuck call could crash
  the test process).
- Scenarios that need the main thread (signals), that could crash or wedge the interpreter (GC of
  buffers the kernel uses, fork, close under a stuck call, calls that could close a wrong descriptor)
  run in a child Python (``subprocess.run([sys.executable, "-c", ...], timeout=...)``), which imports
  this module and runs the same kind of scenario function under the same watch; a step that overruns
  there prints ``HUNG: ...`` and every thread's traceback, and the child exits non-zero.

Every scenario runs on every installed stack: the default preset and, when their plugins import, the
server preset, the SQPOLL backend, the futex notifier and the direct-wake completion sink; each with the
threaded and the inline dispatcher. A stack whose plugin is missing is skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import faulthandler
import gc
import importlib
import itertools
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host.abi.syscalls import SYSCALLS as NR

pytestmark = pytest.mark.usefixtures("lane_impl")  # lane.c and its pure-Python twin

SHORT = 0.5
"""Seconds a short call may take while other calls of the same instance are pending."""
GRACE = 1.0
"""Extra seconds before a step that is merely slow counts as hung (and the scenario stops there)."""
STEP = 5.0
"""Default deadline of a step that waits for something (another thread, the kernel)."""
SETTLE = 0.1
"""Seconds other threads get to enter their blocking calls before the scenario goes on."""
SLEEP_MS = 600
"""How long the raw ``poll(NULL, 0, ms)`` of a scenario occupies a worker."""
HUNG_EXIT = 70
"""Exit status of a child whose watch saw a step overrun."""
LAST_RESORT = 120.0
"""If a test takes this long, the interpreter itself is wedged: faulthandler dumps every thread and exits."""

_LEAKED: list[Any] = []
"""Scenes whose calls hung: kept alive (instances, buffers, threads), never closed."""


# Stacks -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """One selection under test: a preset or a trait choice, with one dispatcher kind."""

    name: str
    dispatcher: str
    choice: tuple[tuple[str, str], ...]
    needs: tuple[str, ...]

    @property
    def id(self) -> str:
        """``default-thread``, ``server-inline``, ..."""
        return f"{self.name}-{self.dispatcher}"

    @property
    def selection(self) -> dict[str, Any]:
        """The keywords of ``ksvc.open`` for this stack."""
        return {**dict(self.choice), "dispatcher": self.dispatcher}

    def missing(self) -> list[str]:
        """Plugin modules this stack needs that do not import."""
        out = []
        for mod in self.needs:
            try:
                importlib.import_module(mod)
            except ImportError:
                out.append(mod)
        return out


_SERVER_PLUGINS = ("ksvc_lazypool", "ksvc_futex")
STACKS = [
    Stack(name, dispatcher, choice, needs)
    for name, choice, needs in (
        ("default", (), ()),
        ("server", (("preset", "server"),), _SERVER_PLUGINS),
        ("sqpoll", (("io_backend", "sqpoll"),), ("ksvc_sqpoll",)),
        ("futex", (("notifier", "futex"),), ("ksvc_futex",)),
        ("direct-wake", (("completion_sink", "direct-wake"),), ("ksvc_futex",)),
    )
    for dispatcher in ("thread", "inline")
]


def _stack_param(stack: Stack) -> Any:
    missing = stack.missing()
    reason = f"stack {stack.id} needs {', '.join(missing)}, which does not import (pip install the plugin)"
    return pytest.param(stack, id=stack.id, marks=pytest.mark.skipif(bool(missing), reason=reason))


@pytest.fixture(params=[_stack_param(s) for s in STACKS])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Every installed stack, with either dispatcher."""
    return request.param


# Bounded steps --------------------------------------------------------------------------------------


class Watch:
    """The step a scenario is in and its deadline, written by the scenario, read by whoever watches it."""

    def __init__(self) -> None:
        self.now: tuple[str, float, float] = ("starting", time.monotonic(), STEP)

    def step(self, what: str, limit: float = STEP) -> None:
        """Enter step *what*; it must end within *limit* seconds."""
        self.now = (what, time.monotonic(), limit)

    def call(self, what: str, fn: Callable[[], Any], within: float = SHORT) -> Any:
        """``fn()``, which must return within *within* seconds (hung after *within* + :data:`GRACE`)."""
        self.step(what, within + GRACE)
        t0 = time.monotonic()
        out = fn()
        took = time.monotonic() - t0
        assert took < within, f"{what} took {took:.2f} s; it must return within {within:g} s"
        return out

    def overrun(self) -> str | None:
        """What hung, once the current step is past its deadline."""
        what, since, limit = self.now
        if time.monotonic() - since <= limit:
            return None
        return f"{what} did not finish within {limit:g} s (hung)"


class Background:
    """A call made on a thread of its own (a caller that blocks), with its outcome.

    With *linger*, the thread stays (idle) after the call returns until *linger* is set: with the inline
    dispatcher a thread that exits ends what it submitted for other threads that still wait (README,
    Reliability), which is not what the scenarios here are about.
    """

    def __init__(self, what: str, fn: Callable[..., Any], *args: Any, linger: threading.Event | None = None) -> None:
        self.what = what
        self._linger = linger
        self.result: Any = None
        self.error: BaseException | None = None
        self.doing = ""
        """What the call is doing now, when it is a loop of calls (for the message when it hangs)."""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn, args), name=f"bg: {what}", daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
            self.error = exc
        finally:
            self.done.set()
        if self._linger is not None:
            self._linger.wait()

    @property
    def alive(self) -> bool:
        """True while the call has not returned."""
        return not self.done.is_set()

    def outcome(self, within: float) -> tuple[Any, BaseException | None]:
        """``(result, exception)`` once the call returned; fail if it does not within *within* seconds."""
        if not self.done.wait(within):
            doing = f" (stuck in {self.doing})" if self.doing else ""
            raise AssertionError(f"{self.what} did not return within {within:g} s{doing}")
        return self.result, self.error

    def wait(self, within: float) -> Any:
        """The call's result (its exception is raised here)."""
        result, error = self.outcome(within)
        if error is not None:
            raise error
        return result


# The world of one scenario ---------------------------------------------------------------------------


class Scene:
    """One scenario's stack, instances, descriptors, threads and watch; released unless something hung."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.watch = Watch()
        self.hung = False
        self._instances: list[Any] = []
        self._fds: list[int] = []
        self._socks: list[socket.socket] = []
        self.background: list[Background] = []
        self._linger = threading.Event()
        self.tmp = Path(tempfile.mkdtemp(prefix="ksvc-concurrency-"))

    @property
    def selection(self) -> dict[str, Any]:
        """The stack's keywords for ``ksvc.open`` / ``ksvc.open_async``."""
        return self.stack.selection

    def open(self, **extra: Any) -> ksvc.Ksvc:
        """A blocking instance of the stack (closed with the scene)."""
        k = ksvc.open(**{**self.selection, **extra})
        self._instances.append(k)
        return k

    def fd(self, fd: int) -> int:
        """Close *fd* with the scene."""
        self._fds.append(fd)
        return fd

    def pipe(self) -> tuple[int, int]:
        """An empty pipe."""
        r, w = os.pipe()
        return self.fd(r), self.fd(w)

    def data_file(self, size: int = 1 << 16) -> tuple[int, bytes]:
        """A file of *size* random bytes, open read-write, and its contents."""
        data = os.urandom(size)
        path = self.tmp / f"data-{len(self._fds)}"
        path.write_bytes(data)
        return self.fd(os.open(path, os.O_RDWR)), data

    def sock(self, s: socket.socket) -> socket.socket:
        """Close *s* with the scene."""
        self._socks.append(s)
        return s

    def start(self, what: str, fn: Callable[..., Any], *args: Any) -> Background:
        """Make a call on a thread of its own (which stays until the scene is released)."""
        b = Background(what, fn, *args, linger=self._linger)
        self.background.append(b)
        return b

    def run(self, body: Callable[[Scene], None], total: float = 30.0) -> None:
        """Run *body* in this process on a daemon thread; fail naming the step when one overruns."""
        b = Background(body.__name__, body, self)
        deadline = time.monotonic() + total
        while b.alive:
            hung = self.watch.overrun() or (f"{body.__name__} ran past {total:g} s" if time.monotonic() > deadline
                                            else None)  # fmt: skip
            if hung:
                self.hung = True
                pytest.fail(f"hung: {hung}", pytrace=False)
            b.done.wait(0.02)
        b.wait(0)

    def run_child(self, body: Callable[[Scene], None], total: float = 20.0) -> None:
        """Run *body* in a child Python, on its main thread, under the same watch; fail on any non-zero exit."""
        from ksvc_basic import lane_reference, own_rings

        here = Path(__file__)
        twin = own_rings.lane_module() is lane_reference  # the lane_impl fixture's choice, for the child too
        code = (f"import sys; sys.path.insert(0, {str(here.parent)!r}); import {here.stem} as m; "
                f"m.child_main({body.__name__!r}, {self.stack.id!r}, {total!r}, twin={twin!r})")  # fmt: skip
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=total + 10,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            pytest.fail(f"hung: the child running {body.__name__} did not exit within {total + 10:g} s\n{err[-3000:]}",
                        pytrace=False)  # fmt: skip
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            errors = [i for i, ln in enumerate(lines)
                      if ln[:1].isalpha() and ln.split(":")[0].endswith(("Error", "Exception"))]  # fmt: skip
            head = next((ln for ln in lines if ln.startswith("HUNG: ")), None)
            if head is None and errors:  # the exception's line, and the lines of a multi-line message
                rest = itertools.takewhile(lambda ln: ln.startswith("  ") and not ln.startswith("  File"),
                                           lines[errors[-1] + 1 :])  # fmt: skip
                head = "\n".join([lines[errors[-1]], *rest])
            if proc.returncode < 0:
                crash = f"the child was killed by signal {signal.Signals(-proc.returncode).name} (crash)"
                head = f"{crash}, after: {head}" if head else crash
            if head is None:
                head = next((ln for ln in reversed(lines) if not ln.startswith(" ")), f"exit {proc.returncode}")
            tail = "\n".join(lines[-40:])
            pytest.fail(f"{head}\n--- child (exit {proc.returncode}) stderr, last lines ---\n{tail}", pytrace=False)

    def close(self) -> None:
        """Release everything, unless a call is still stuck: then keep it all alive and untouched."""
        if self.hung or any(b.alive for b in self.background):
            _LEAKED.append(self)
            return
        self._linger.set()
        for k in self._instances:
            closing = Background("closing the instance", k.close)
            try:
                closing.outcome(STEP)
            except AssertionError:
                _LEAKED.append(self)
                raise
        for s in self._socks:
            s.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def scene(stack: Stack) -> Iterator[Scene]:
    """The world of one scenario on *stack*."""
    s = Scene(stack)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _last_resort() -> Iterator[None]:
    """If the interpreter itself wedges (no watch can run), dump every thread and exit rather than hang CI."""
    faulthandler.dump_traceback_later(LAST_RESORT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def child_main(name: str, stack_id: str, total: float, twin: bool = False) -> None:
    """The child's side of :meth:`Scene.run_child`: run scenario *name* on the main thread, watched (on the
    lanes' pure-Python twin when *twin*)."""
    faulthandler.enable()
    if twin:
        from ksvc_basic import lane_reference, own_rings

        own_rings.lane_module = lambda: lane_reference
    scene = Scene(next(s for s in STACKS if s.id == stack_id))
    deadline = time.monotonic() + total

    def watchdog() -> None:
        while True:
            time.sleep(0.02)
            hung = scene.watch.overrun() or (f"{name} ran past {total:g} s" if time.monotonic() > deadline else None)
            if hung:
                sys.stderr.write(f"HUNG: {hung}\n")
                sys.stderr.flush()
                faulthandler.dump_traceback(all_threads=True)
                os._exit(HUNG_EXIT)

    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    globals()[name](scene)
    scene.watch.step("releasing the scene", STEP)
    scene.close()


# Helpers -----------------------------------------------------------------------------------------------


def _readable(fd: int, timeout: float) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


def _drain(fd: int, timeout: float = 0.2) -> bytes:
    """Whatever the pipe holds (waiting at most *timeout* for the first byte), without blocking."""
    out = b""
    while _readable(fd, timeout):
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
        timeout = 0
    return out


def _until_idle(k: ksvc.Ksvc, what: str, within: float = 2.0) -> None:
    """``k.raw.pending()`` must come back to 0 (every entry completed once) within *within* seconds."""
    deadline = time.monotonic() + within
    while k.raw.pending():
        if time.monotonic() > deadline:
            raise AssertionError(f"{k.raw.pending()} entries still pending {within:g} s after {what}")
        time.sleep(0.005)


_STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size")


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return tuple(getattr(st, f) for f in _STAT_FIELDS)


# 1. One instance, calls of every tier, while other threads' calls are pending ---------------------------


def scenario_short_calls_while_others_block(scene: Scene) -> None:
    # A spare worker for the short Tier 2 call: this pins the dispatcher and front end, not the pool's size.
    k = scene.open(options={"workers": 4, "max_workers": 4})
    w_ = scene.watch
    fd, data = scene.data_file()
    r, w = scene.pipe()
    listener = scene.sock(socket.create_server(("127.0.0.1", 0)))
    s1, s2 = (scene.sock(s) for s in socket.socketpair())
    a = scene.start("thread A: k.read on an empty pipe", k.read, r, 10)
    b = scene.start("thread B: k.accept on a listening socket", k.accept, listener.fileno())
    c = scene.start(f"thread C: raw poll(NULL, 0, {SLEEP_MS}) (Tier 2)", k.syscall, NR["poll"], 0, 0, SLEEP_MS)
    c_started = time.monotonic()
    time.sleep(SETTLE)
    pending = "while a read, an accept and a Tier 2 poll are pending"
    assert w_.call(f"k.pread (Tier 1) {pending}", lambda: k.pread(fd, 100, 5)) == data[5:105]
    assert w_.call(f"k.getcwd (Tier 2) {pending}", k.getcwd) == os.getcwd()
    assert w_.call(f"k.getpid (Tier 0) {pending}", k.getpid) == os.getpid()
    assert _stat_key(w_.call(f"k.fstat (Tier 1) {pending}", lambda: k.fstat(fd))) == _stat_key(os.fstat(fd))
    assert w_.call(f"k.send on a socketpair {pending}", lambda: k.send(s1.fileno(), b"ping")) == 4
    assert w_.call(f"k.recv on a socketpair {pending}", lambda: k.recv(s2.fileno(), 10)) == b"ping"
    for x in (a, b):
        assert x.alive, f"{x.what} returned early: {x.outcome(0)}"
    client = scene.sock(socket.create_connection(listener.getsockname()))
    new_fd, peer = b.wait(1.0)
    conn = scene.sock(socket.socket(fileno=new_fd))
    assert peer == client.getsockname() and conn.getpeername() == client.getsockname(), "B accepted the wrong peer"
    client.sendall(b"hi")
    assert conn.recv(10) == b"hi"
    os.write(w, b"0123456789abc")
    assert a.wait(1.0) == b"0123456789", "thread A's read got the wrong bytes"
    assert os.read(r, 10) == b"abc", "the bytes past A's read were not left in the pipe"
    assert c.wait(SLEEP_MS / 1000 + 2.0) == 0, "the raw poll did not return 0"
    slept = time.monotonic() - c_started
    assert slept >= SLEEP_MS / 1000 * 0.9, f"the raw poll({SLEEP_MS} ms) returned after {slept:.2f} s: it did not sleep"
    _until_idle(k, "every call returned")


def test_short_calls_of_every_tier_return_while_other_threads_block(scene: Scene) -> None:
    scene.run(scenario_short_calls_while_others_block)


# 2. The reproducer ---------------------------------------------------------------------------------------


def scenario_reproducer(scene: Scene) -> None:
    k = scene.open()
    r, w = scene.pipe()
    reader = scene.start("k.read(r, 10) on an empty pipe", k.read, r, 10)
    time.sleep(SETTLE)
    path = "/etc/hostname" if os.path.exists("/etc/hostname") else scene.tmp / "hostname"
    if not isinstance(path, str):
        path.write_bytes(b"host\n")
    fd = scene.fd(os.open(path, 0))
    got = scene.watch.call("k.pread(fd, 3, 0) while another thread's k.read waits on an empty pipe",
                           lambda: k.pread(fd, 3, 0), within=1.0)  # fmt: skip
    assert got == os.pread(fd, 3, 0)
    os.write(w, b"x")
    assert reader.wait(1.0) == b"x"


def test_reproducer_pread_returns_while_a_read_waits(scene: Scene) -> None:
    scene.run(scenario_reproducer)


# 3. Many threads, mixed calls, some blocked --------------------------------------------------------------


MIX_SECONDS = 0.4


def scenario_many_threads(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file()
    pipes = [scene.pipe() for _ in range(4)]
    readers = [scene.start(f"reader {i}: k.read on an empty pipe", k.read, r, 64) for i, (r, _) in enumerate(pipes)]
    time.sleep(SETTLE)
    errors: list[str] = []
    stop_at = time.monotonic() + MIX_SECONDS

    doing = [""] * 4

    def mixer(i: int) -> int:
        rnd = random.Random(i)
        calls = 0
        got: Any
        want: Any
        while time.monotonic() < stop_at:
            op = rnd.randrange(5)
            off = rnd.randrange(len(data))
            if op == 0:
                doing[i] = f"k.pread(fd, 256, {off})"
                got, want = k.pread(fd, 256, off), data[off : off + 256]
            elif op == 1:
                doing[i] = "k.getcwd()"
                got, want = k.getcwd(), os.getcwd()
            elif op == 2:
                doing[i] = "k.getpid()"
                got, want = k.getpid(), os.getpid()
            elif op == 3:
                doing[i] = "k.fstat(fd)"
                got, want = _stat_key(k.fstat(fd)), _stat_key(os.fstat(fd))
            else:
                doing[i] = "a batch of 8 preads"
                batch = k.batch()
                offs = [rnd.randrange(len(data)) for _ in range(8)]
                for o in offs:
                    batch.pread(fd, 64, o)
                got, want = batch.run(), [data[o : o + 64] for o in offs]
            calls += 1
            if got != want:
                errors.append(f"{doing[i]}: {got!r:.60} != {want!r:.60}")
        return calls

    mixers = [scene.start(f"mixer {i}", mixer, i) for i in range(4)]
    counts = []
    for i, m in enumerate(mixers):
        if not m.done.wait(MIX_SECONDS + 2 * GRACE):
            raise AssertionError(f"mixer {i} hung in {doing[i]} (with 4 readers blocked on empty pipes)")
        counts.append(m.wait(0))
    assert not errors, f"{len(errors)} wrong results, first: {errors[0]}"
    assert all(counts), f"a mixer made no call: {counts}"
    assert k.raw.pending() == len(readers), f"pending() is {k.raw.pending()}, but only the 4 readers wait"
    for i, (_, w) in enumerate(pipes):
        os.write(w, bytes([65 + i]) * (i + 1))
    for i, rd in enumerate(readers):
        assert rd.wait(1.0) == bytes([65 + i]) * (i + 1), f"reader {i} got another pipe's bytes"
    _until_idle(k, "every reader returned")


def test_many_threads_mixed_calls_complete_exactly_once(scene: Scene) -> None:
    scene.run(scenario_many_threads)


# 4. Signals (in a child: Python runs handlers on the main thread only) ----------------------------------


def _signal_main_after(delay: float, sig: int = signal.SIGINT) -> threading.Timer:
    t = threading.Timer(delay, signal.pthread_kill, (threading.main_thread().ident, sig))
    t.daemon = True
    t.start()
    return t


def scenario_sigint_interrupts_a_blocked_read(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file()
    r, w = scene.pipe()
    _signal_main_after(SETTLE)
    scene.watch.step("k.read on an empty pipe, SIGINT sent after 0.2 s: KeyboardInterrupt", SETTLE + 2.0)
    try:
        got = k.read(r, 10)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"k.read returned {got!r} instead of raising KeyboardInterrupt (as os.read does)")
    assert scene.watch.call("k.pread after the interrupt", lambda: k.pread(fd, 64, 100)) == data[100:164]
    assert scene.watch.call("k.getcwd after the interrupt", k.getcwd) == os.getcwd()
    os.write(w, b"after")
    got = _drain(r, 0.5)
    assert got == b"after", f"bytes written after the interrupted k.read were lost: the pipe gave {got!r}"
    os.write(w, b"again")
    assert scene.watch.call("a new k.read", lambda: k.read(r, 10)) == b"again"
    _until_idle(k, "the interrupted read")


def test_sigint_interrupts_a_blocked_read_and_loses_no_data(scene: Scene) -> None:
    # With dispatcher="inline" this is also "a blocking read interrupted by SIGINT, then data written: not lost".
    scene.run_child(scenario_sigint_interrupts_a_blocked_read)


def scenario_sigint_storm(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file()
    main = threading.main_thread().ident
    assert main is not None
    go = threading.Event()

    counts = {"interrupted": 0}

    def storm() -> None:
        go.wait()
        for i in range(50):
            signal.pthread_kill(main, signal.SIGINT)
            # The next one only once this one was caught: one landing on the loop's own back edge, outside
            # the try below, would end the test rather than test the instance.
            deadline = time.monotonic() + 1.0
            while counts["interrupted"] <= i and time.monotonic() < deadline:
                time.sleep(0.0002)
            time.sleep(rnd_storm.uniform(0.0002, 0.001))
        storm_over.set()

    rnd_storm = random.Random(8)
    storm_over = threading.Event()  # not Thread.is_alive(): a KeyboardInterrupt inside it can mark the thread stopped
    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    rnd = random.Random(7)
    calls = wrong = 0
    scene.watch.step("a loop of k.pread under a storm of 50 SIGINTs", 10.0)
    finished = False
    while not finished:
        try:  # a SIGINT may land anywhere in the loop, not only inside k.pread
            go.set()
            while True:
                if storm_over.is_set() and calls >= 200:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIGINTs still pending are dropped from here
                    finished = True
                    break
                off = rnd.randrange(len(data) - 512)
                got = k.pread(fd, 512, off)
                calls += 1
                if got != data[off : off + 512]:
                    wrong += 1
        except KeyboardInterrupt:
            counts["interrupted"] += 1
    interrupted = counts["interrupted"]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert wrong == 0, f"{wrong} of {calls} preads returned wrong bytes during the storm"
    assert interrupted, "no SIGINT reached the loop"
    scene.watch.step("the instance after the storm", 5.0)
    _until_idle(k, "the storm")
    assert scene.watch.call("k.pread after the storm", lambda: k.pread(fd, 64, 0)) == data[:64]
    assert scene.watch.call("k.getcwd after the storm", k.getcwd) == os.getcwd()
    assert k.raw.pending() == 0


def test_sigint_storm_leaves_the_instance_working(scene: Scene) -> None:
    scene.run_child(scenario_sigint_storm)


def scenario_sigint_mid_asyncio_batches(scene: Scene) -> None:
    # Ctrl-C while 64 tasks loop on k.pread (completions delivered a turn's batch at a time) and one task
    # waits in k.read on an empty pipe: asyncio.run ends with KeyboardInterrupt, no task reports an error
    # on the way out, every read returned the right bytes, and the waiting read ate nothing written later.
    fd, data = scene.data_file()
    r, w = scene.pipe()
    reads = {"done": 0, "wrong": 0}
    reported: list[str] = []

    async def reader(k: Any, rnd: random.Random) -> None:
        while True:
            off = rnd.randrange(len(data) - 4096)
            if await k.pread(fd, 4096, off) != data[off : off + 4096]:
                reads["wrong"] += 1
            reads["done"] += 1
            if reads["done"] == 64:  # the reads are going (however long the instance took to start): Ctrl-C
                _signal_main_after(SETTLE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(str(context.get("exception") or context)))
        async with ksvc.open_async(**scene.selection) as k:
            readers = [asyncio.ensure_future(reader(k, random.Random(i))) for i in range(64)]
            waiting = asyncio.ensure_future(k.read(r, 10))
            await asyncio.gather(*readers, waiting)

    scene.watch.step("64 tasks on k.pread, one k.read on an empty pipe, SIGINT 0.1 s into the reads", SETTLE + 5.0)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("asyncio.run returned instead of raising KeyboardInterrupt")
    assert reads["done"] > 0 and reads["wrong"] == 0, reads
    assert not reported, f"tasks reported errors while the interrupted program stopped: {reported[:3]}"
    os.write(w, b"later")

    async def read_again() -> bytes:
        async with ksvc.open_async(**scene.selection) as k:
            return bytes(await asyncio.wait_for(k.read(r, 10), 5))

    scene.watch.step("a new instance reads what was written after the interrupt", 10.0)
    assert asyncio.run(read_again()) == b"later", "the interrupted k.read consumed bytes written after it"


def test_sigint_mid_asyncio_batches_stops_cleanly_and_loses_no_data(scene: Scene) -> None:
    scene.run_child(scenario_sigint_mid_asyncio_batches)


class Custom(Exception):
    """What a signal handler raises."""


def scenario_handler_exception_reaches_the_caller(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file()
    r, w = scene.pipe()

    def handler(signum: int, frame: Any) -> None:
        raise Custom("from the handler")

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        _signal_main_after(SETTLE, signal.SIGUSR1)
        scene.watch.step("k.read on an empty pipe, SIGUSR1 whose handler raises", SETTLE + 2.0)
        try:
            got = k.read(r, 10)
        except Custom:
            pass
        else:
            raise AssertionError(f"k.read returned {got!r}; the handler's exception must reach the caller")
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert scene.watch.call("k.pread after the handler raised", lambda: k.pread(fd, 64, 7)) == data[7:71]
    os.write(w, b"later")
    got = _drain(r, 0.5)
    assert got == b"later", f"bytes written after the interrupted k.read were lost: the pipe gave {got!r}"
    _until_idle(k, "the interrupted read")


def test_a_signal_handlers_exception_reaches_the_caller(scene: Scene) -> None:
    scene.run_child(scenario_handler_exception_reaches_the_caller)


# 5. Garbage collection ---------------------------------------------------------------------------------------


def scenario_gc_after_async_pwrite_from_memoryview(scene: Scene) -> None:
    fd, _ = scene.data_file(4096)

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            scene.watch.step("await k.pwrite(fd, memoryview(b'abc'), 0); gc.collect()")
            assert await k.pwrite(fd, memoryview(b"abc"), 0) == 3
            gc.collect()
            scene.watch.step(f"{MEMORYVIEW_OPS} awaits of k.pwrite from a memoryview, gc enabled", 30.0)
            for i in range(MEMORYVIEW_OPS):
                assert await k.pwrite(fd, memoryview(b"abc"), i % 4000) == 3
            gc.collect()

    asyncio.run(main())
    gc.collect()
    assert os.pread(fd, 3, (MEMORYVIEW_OPS - 1) % 4000) == b"abc", "the last pwrite's bytes are not in the file"


def test_gc_after_async_pwrite_from_a_memoryview_does_not_crash(scene: Scene) -> None:
    scene.run_child(scenario_gc_after_async_pwrite_from_memoryview, total=40.0)


def _fill(w: int) -> None:
    """Fill the pipe whose write end is *w*: a write to it waits in the kernel until someone reads."""
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)


async def _open_async(scene: Scene) -> Any:
    return await ksvc.open_async(**scene.selection)


def scenario_abandoned_loop_with_buffers_in_flight(scene: Scene) -> None:
    full_r, full_w = scene.pipe()
    empty_r, empty_w = scene.pipe()
    _fill(full_w)

    def abandon() -> None:
        loop = asyncio.new_event_loop()
        k = loop.run_until_complete(_open_async(scene))
        out, into = memoryview(bytearray(1 << 20)), memoryview(bytearray(4096))
        scene.watch.step("await k.write to a full pipe, k.readinto from an empty one, both from memoryviews")
        tasks = [loop.create_task(k.write(full_w, out)), loop.create_task(k.readinto(empty_r, into))]
        loop.run_until_complete(asyncio.sleep(SETTLE))
        assert not any(t.done() for t in tasks), "a call on a full or an empty pipe completed"
        cycle: list[Any] = [loop, k, tasks]
        cycle.append(cycle)
        recorder = sys.modules.get("ksvc_test_plugin")  # the test suite's plugin records each instance it sees
        if recorder is not None:
            recorder.EVENTS.clear()

    found: list[str] = []
    with _collected(lambda garbage: found.extend(_buffer_holders(garbage))):
        abandon()
        scene.watch.step("the loop, the instance and the tasks dropped in a cycle: gc.collect()")
    assert not found, ("the collector would clear what an entry in flight still holds (clearing an exported "
                       f"memoryview crashes it): {', '.join(sorted(set(found)))}")  # fmt: skip
    gc.collect()
    os.write(empty_w, b"late")  # the kernel finishes the read into the kept buffer, the write after a drain
    _drain(full_r, 0.2)
    time.sleep(SETTLE)
    gc.collect()


def _buffer_holders(objs: list[Any]) -> list[str]:
    return [type(o).__qualname__ for o in objs if isinstance(o, memoryview) or type(o).__name__ == "__CDataFromBuf"]


def test_a_loop_dropped_with_buffers_in_flight_leaves_them_to_the_kernel_not_the_collector(scene: Scene) -> None:
    """A program that drops its event loop and instance (in a cycle) while a write and a read from memoryviews
    wait in the kernel: the views stay held as long as the kernel may use them, never cleared by the collector."""
    scene.run_child(scenario_abandoned_loop_with_buffers_in_flight, total=30.0)


def _failing_buffer_calls(fd: int, readonly_fd: int, pipe_r: int) -> list[tuple[str, Callable[[Any], Any], int]]:
    """(what, call(k), the errno ``os`` gives) for every call that takes a caller's buffer, each made so that it
    fails, the buffer a fresh memoryview (a cast or a slice) that nothing but the call refers to."""
    bad = 0x7FFF_0000  # no such descriptor

    def rw(n: int = 8) -> memoryview:
        return memoryview(bytearray(n * 2))[n:]

    def ro(n: int = 8) -> memoryview:
        return memoryview(bytes(n)).cast("B")

    return [
        ("pwrite, no such descriptor", lambda k: k.pwrite(bad, ro(), 0), errno.EBADF),
        ("pwrite, a read-only descriptor", lambda k: k.pwrite(readonly_fd, ro(), 0), errno.EBADF),
        ("write", lambda k: k.write(bad, ro()), errno.EBADF),
        ("preadinto, a pipe", lambda k: k.preadinto(pipe_r, rw(), 0), errno.ESPIPE),
        ("preadinto, no such descriptor", lambda k: k.preadinto(bad, rw(), 0), errno.EBADF),
        ("readinto", lambda k: k.readinto(bad, rw()), errno.EBADF),
        ("recv_into", lambda k: k.recv_into(bad, rw()), errno.EBADF),
        ("send", lambda k: k.send(bad, ro()), errno.EBADF),
        ("writev", lambda k: k.writev(bad, [ro(), ro()]), errno.EBADF),
        ("readv", lambda k: k.readv(bad, [rw(), rw()]), errno.EBADF),
        ("pwritev", lambda k: k.pwritev(bad, [ro()], 0), errno.EBADF),
        ("preadv", lambda k: k.preadv(bad, [rw()], 0), errno.EBADF),
        ("preadinto_many, a pipe", lambda k: k.preadinto_many(pipe_r, rw(8), 4, [0, 4]), errno.ESPIPE),
        ("preadinto_many, a bad offset", lambda k: k.preadinto_many(fd, rw(8), 4, [0, -4]), errno.EINVAL),
        ("pwrite_many, a read-only descriptor", lambda k: k.pwrite_many(readonly_fd, ro(8), 4, [0, 4]), errno.EBADF),
        ("preadinto_many, a buffer too small", lambda k: k.preadinto_many(fd, rw(4), 4, [0, 4]), 0),
        ("pwrite, an offset that is not an int", lambda k: k.pwrite(fd, ro(), "0"), 0),
    ]


def scenario_failed_calls_on_memoryviews_in_reference_cycles(scene: Scene) -> None:
    fd, _ = scene.data_file(4096)
    readonly_fd = scene.fd(os.open(scene.tmp / "data-0", os.O_RDONLY))
    pipe_r, pipe_w = os.pipe()
    scene.fd(pipe_r)
    scene.fd(pipe_w)
    calls = _failing_buffer_calls(fd, readonly_fd, pipe_r)

    def check(what: str, exc: BaseException, want: int) -> None:
        if want:
            assert isinstance(exc, OSError) and exc.errno == want, f"{what}: {exc!r}, os gives errno {want}"
        else:
            assert isinstance(exc, ValueError | TypeError), f"{what}: {exc!r}"

    def cycle(call: Callable[[], Any]) -> None:
        err = None
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - kept, as programs do, in the frame its traceback holds
            err = exc
        assert err is not None, "the call did not fail"
        raise err

    with ksvc.open(**scene.selection) as k:
        for what, call, want in calls:
            scene.watch.step(f"blocking {what}; its OSError kept in a cycle; gc.collect()")
            for _ in range(3):
                try:
                    cycle(lambda call=call: call(k))  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001
                    check(what, exc, want)
                gc.collect()

    async def acycle(call: Callable[[], Any]) -> None:
        err = None
        try:
            await call()
        except Exception as exc:  # noqa: BLE001
            err = exc
        assert err is not None, "the call did not fail"
        raise err

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            for what, call, want in calls:
                scene.watch.step(f"await {what}; its OSError kept in a cycle; gc.collect()")
                for _ in range(3):
                    try:
                        await acycle(lambda call=call: call(k))  # type: ignore[misc]
                    except Exception as exc:  # noqa: BLE001
                        check(what, exc, want)
                    gc.collect()

    asyncio.run(main())


def test_failed_calls_on_memoryviews_kept_in_reference_cycles_do_not_crash_the_collector(scene: Scene) -> None:
    """A failed call's exception kept by the frame its traceback holds (``err = exc; raise err``) makes a
    cycle; the call's memoryview is in it. Before the collector clears it, KSVC must have let go of the view
    it took of the memoryview (CPython's collector crashes clearing a memoryview that is still exported)."""
    scene.run_child(scenario_failed_calls_on_memoryviews_in_reference_cycles, total=40.0)


GC_OPS = 2000
"""Operations per front end before the collector is asked what they left (each op that leaves a cycle leaves
several objects, so a few thousand show it as surely as many; the server preset runs ~300 us per op here)."""
MEMORYVIEW_OPS = 3000
"""``await k.pwrite`` from a memoryview with the collector on: automatic collections run dozens of times."""


def _ksvc_garbage(objs: list[Any]) -> list[str]:
    """Descriptions of the objects in *objs* that belong to KSVC or cffi."""
    out = []
    for o in objs:
        mod = getattr(type(o), "__module__", "") or ""
        own = getattr(o, "__module__", "") if callable(o) else ""
        if any(str(m).startswith(("ksvc", "_cffi_backend")) for m in (mod, own)):
            out.append(f"{type(o).__qualname__} from {own or mod}")
    return out


@contextlib.contextmanager
def _collected(record: Callable[[list[Any]], None]) -> Iterator[None]:
    """Collect with the collector off meanwhile; what the final collection finds unreachable goes to *record*."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # unreachable objects land in gc.garbage instead of being freed
    try:
        yield
        gc.collect()
        record(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@contextlib.contextmanager
def _unreachable(scene: Scene, front_end: str, found: dict[str, list[str]]) -> Iterator[None]:
    """The KSVC and cffi objects left unreachable by the block go to *found*."""
    scene.watch.step(f"{GC_OPS} operations: {front_end}", 30.0)
    with _collected(lambda garbage: found.__setitem__(front_end, _ksvc_garbage(garbage))):
        yield


def scenario_no_garbage_cycles(scene: Scene) -> None:
    fd, data = scene.data_file()
    found: dict[str, list[str]] = {}
    with ksvc.open(**scene.selection) as k:
        with _unreachable(scene, "blocking k.pread", found):
            for i in range(GC_OPS):
                assert k.pread(fd, 16, i) == data[i : i + 16]
        with _unreachable(scene, "k.batch() of 16 preads", found):
            for i in range(0, GC_OPS, 16):
                b = k.batch()
                for j in range(16):
                    b.pread(fd, 16, i + j)
                assert b.run() == [data[i + j : i + j + 16] for j in range(16)]

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            with _unreachable(scene, "await k.pread", found):
                for i in range(GC_OPS):
                    assert await k.pread(fd, 16, i) == data[i : i + 16]
            with _unreachable(scene, "await k.pwrite from a memoryview", found):
                for i in range(GC_OPS):
                    assert await k.pwrite(fd, memoryview(b"abc"), 60000 + i % 64) == 3

    asyncio.run(main())
    bad = {fe: g for fe, g in found.items() if g}
    assert not bad, "reference cycles left for the collector after " + "; ".join(
        f"{fe}: {len(g)} objects, e.g. {', '.join(sorted(set(g))[:4])}" for fe, g in bad.items()
    )


def test_no_garbage_cycles_after_thousands_of_operations_of_each_front_end(scene: Scene) -> None:
    scene.run_child(scenario_no_garbage_cycles, total=60.0)


FAILED_OPS = 10
"""Repetitions of each failing call before the collector is asked what they left."""


def _failing_calls(fd: int, pipe_r: int) -> list[tuple[str, Callable[[Any], Any]]]:
    """(what, call(k)) for calls that fail the way os.* would, through each path of a front end: a lane's
    entry, the shared channel, a bulk on a lane whose rest fails on the channel, and streams."""
    bad = 0x7FFF_0000  # no such descriptor
    many = [0] * 5000 + [-4096]  # more entries than a lane has slots, the last one refused by the kernel
    return [
        ("pread, no such descriptor", lambda k: k.pread(bad, 16, 0)),
        ("pread, a pipe", lambda k: k.pread(pipe_r, 16, 0)),
        ("pwrite, a bad offset", lambda k: k.pwrite(fd, b"abc", -1)),
        ("stat, no such file", lambda k: k.stat("/nonexistent/ksvc")),
        ("pread_many, a bad offset", lambda k: k.pread_many(fd, 16, [0, 16, -4096])),
        ("pread_many, more than a lane's slots, the last one bad", lambda k: k.pread_many(fd, 8, many)),
        ("preadinto_many, the same", lambda k: k.preadinto_many(fd, bytearray(8 * len(many)), 8, many)),
        ("pwrite_many, a bad offset", lambda k: k.pwrite_many(fd, b"abcdabcd", 4, [0, -4])),
    ]


def scenario_no_garbage_cycles_after_failures(scene: Scene) -> None:
    fd, _ = scene.data_file()
    pipe_r, _ = scene.pipe()
    calls = _failing_calls(fd, pipe_r)
    found: dict[str, int] = {}
    with ksvc.open(**scene.selection) as k:
        for what, call in calls + [("pread_iter, a bad offset", lambda k: list(k.pread_iter(fd, 16, [0, -4096])))]:
            scene.watch.step(f"blocking {what}, {FAILED_OPS} times", 30.0)
            with _collected(lambda garbage, what=what: found.__setitem__(f"blocking {what}", len(garbage))):
                for _ in range(FAILED_OPS):
                    with pytest.raises(OSError):
                        call(k)

    async def stream(k: Any) -> list[bytes]:
        return [b async for b in k.pread_iter(fd, 16, [0, -4096])]

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            for what, call in calls + [("pread_iter, a bad offset", stream)]:
                scene.watch.step(f"await {what}, {FAILED_OPS} times", 30.0)
                with _collected(lambda garbage, what=what: found.__setitem__(f"await {what}", len(garbage))):
                    for _ in range(FAILED_OPS):
                        with pytest.raises(OSError):
                            await call(k)

    asyncio.run(main())
    bad = {what: n for what, n in found.items() if n}
    assert not bad, "failed calls left reference cycles for the collector: " + "; ".join(
        f"{what}: {n} objects" for what, n in bad.items()
    )


def test_failed_calls_leave_no_garbage_cycles(scene: Scene) -> None:
    scene.run_child(scenario_no_garbage_cycles_after_failures, total=60.0)


class Buf(bytearray):
    """A bytearray that can be watched with a weak reference."""


def scenario_gc_while_reads_are_in_flight(scene: Scene) -> None:
    k = scene.open()
    pipes = [scene.pipe() for _ in range(4)]
    readers = [scene.start(f"reader {i}: k.read(r, 4096) on an empty pipe", k.read, r, 4096)
               for i, (r, _) in enumerate(pipes)]  # fmt: skip
    r5, w5 = scene.pipe()
    buf = Buf(4096)
    ref = weakref.ref(buf)
    into = scene.start("k.readinto(r, buffer) whose buffer only the call holds", k.readinto, r5, buf)
    del buf
    time.sleep(SETTLE)
    stop = threading.Event()

    def collector() -> None:
        while not stop.is_set():
            gc.collect()

    churn = scene.start("gc.collect() in a loop", collector)
    scene.watch.step("collections and churn while reads are in flight", 10.0)
    for _ in range(5):
        gc.collect()
        junk = [bytearray(4096) for _ in range(256)]  # reuse whatever memory a collection freed
        del junk
    assert ref() is not None, "the buffer of a read still in flight was freed by the collector"
    payloads = [os.urandom(3000 + i) for i in range(4)]
    for (_, w), p in zip(pipes, payloads, strict=True):
        os.write(w, p)
    os.write(w5, b"z" * 100)  # before any reader returns: see the README on threads that exit (inline dispatcher)
    for i, (rd, p) in enumerate(zip(readers, payloads, strict=True)):
        assert rd.wait(2.0) == p, f"reader {i} got damaged bytes after collections while its read was in flight"
    assert into.wait(2.0) == 100
    stop.set()
    churn.wait(5.0)
    _until_idle(k, "the reads completed")


def test_gc_while_reads_are_in_flight_keeps_their_buffers(scene: Scene) -> None:
    scene.run_child(scenario_gc_while_reads_are_in_flight)


# 6. Cancellation (asyncio) ---------------------------------------------------------------------------------


ROUNDS = 20


def scenario_cancelled_read_loses_no_data(scene: Scene) -> None:
    r, w = scene.pipe()
    lost: list[int] = []

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            for i in range(ROUNDS):
                scene.watch.step(f"round {i}: cancel a k.read waiting on an empty pipe, then write")
                task = asyncio.ensure_future(k.read(r, 10))
                await asyncio.sleep(0.01)
                task.cancel()
                try:
                    got = await task
                except asyncio.CancelledError:
                    pass
                else:
                    raise AssertionError(f"round {i}: the cancelled read returned {got!r} from an empty pipe")
                os.write(w, b"hello")
                if _drain(r, 0.1) != b"hello":
                    lost.append(i)
            scene.watch.step("a k.read after the rounds")
            os.write(w, b"end")
            try:
                end = await asyncio.wait_for(k.read(r, 10), 2.0)
            except TimeoutError:
                end = b"(nothing within 2 s: a cancelled read took it)"
            assert end == b"end", f"lost in {len(lost)}/{ROUNDS} rounds; a k.read after them got {end!r}"

    asyncio.run(main())
    n_lost = len(lost)
    assert n_lost == 0, f"bytes written after a cancelled k.read were lost in {n_lost}/{ROUNDS} rounds"


def test_a_cancelled_read_loses_no_data(scene: Scene) -> None:
    scene.run(scenario_cancelled_read_loses_no_data)


def scenario_random_cancellation(scene: Scene) -> None:
    r, w = scene.pipe()
    fd, data = scene.data_file()
    os.set_blocking(w, False)
    rnd = random.Random(1234)
    written = bytearray()
    got: list[bytes] = []
    wrong: list[str] = []

    async def producer() -> None:
        for i in range(300):
            chunk = bytes((i * 7 + j) % 251 for j in range(rnd.randrange(1, 64)))
            try:
                n = os.write(w, chunk)
            except BlockingIOError:
                n = 0
            written.extend(chunk[:n])
            await asyncio.sleep(0.001 if i % 3 else 0)

    async def reader(k: ksvc.AsyncKsvc) -> None:
        got.append(await k.read(r, rnd.randrange(1, 128)))

    async def preader(k: ksvc.AsyncKsvc) -> None:
        off = rnd.randrange(len(data))
        out = await k.pread(fd, 256, off)
        if out != data[off : off + 256]:
            wrong.append(f"pread at {off}")

    async def main() -> None:
        async with ksvc.open_async(**scene.selection) as k:
            scene.watch.step("reads of a pipe being written, and preads, cancelled at random", 15.0)
            prod = asyncio.ensure_future(producer())
            tasks: list[asyncio.Future[None]] = []
            while not prod.done():
                tasks.append(asyncio.ensure_future(reader(k) if rnd.random() < 0.7 else preader(k)))
                await asyncio.sleep(rnd.choice((0, 0, 0.0005, 0.002)))
                for t in rnd.sample(tasks[-8:], k=min(len(tasks), rnd.randrange(0, 3))):
                    t.cancel()
            await prod
            await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()  # the reads still waiting: the pipe is empty now, or will be
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    wrong.append(f"a task failed: {t.exception()!r}")

    asyncio.run(main())
    rest = _drain(r, 0.1)
    read = b"".join(got)
    assert not wrong, f"{len(wrong)} wrong outcomes, first: {wrong[0]}"
    n_written, n_read, n_rest = len(written), len(read), len(rest)
    assert n_read + n_rest == n_written, (
        f"written {n_written} bytes; completed reads got {n_read} and {n_rest} were left in the pipe: "
        f"{n_written - n_read - n_rest} lost (negative: duplicated)"
    )
    same = collections.Counter(read + rest) == collections.Counter(bytes(written))
    assert same, "as many bytes as written came out, but not the same ones: some lost, others duplicated"


def test_random_cancellation_loses_and_duplicates_nothing(scene: Scene) -> None:
    scene.run(scenario_random_cancellation)


# 7. Fork while threads are busy -------------------------------------------------------------------------------


def scenario_fork_while_threads_are_busy(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file()
    stop = threading.Event()
    wrong: list[int] = []
    counts = [0, 0, 0]

    def hammer(i: int) -> None:
        rnd = random.Random(i)
        while not stop.is_set():
            off = rnd.randrange(len(data) - 128)
            if k.pread(fd, 128, off) != data[off : off + 128]:
                wrong.append(off)
            counts[i] += 1

    threads = [scene.start(f"hammer {i}: k.pread in a loop", hammer, i) for i in range(3)]
    time.sleep(0.1)
    scene.watch.step("fork while three threads call k.pread; the child must exit", 10.0)
    pid = os.fork()
    if pid == 0:  # the child: only this thread; no pytest, no cleanup: os._exit
        code = 0
        try:
            try:
                k.pread(fd, 10, 0)
                code = 10  # the inherited instance worked: it must refuse
            except Exception:  # noqa: BLE001 - any clear error is right
                pass
            with ksvc.open(**scene.selection) as fresh:
                if fresh.getpid() != os.getpid():
                    code = 11
                elif fresh.pread(fd, 10, 0) != data[:10]:
                    code = 12
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
            code = 13
        os._exit(code)
    before = sum(counts)
    deadline = time.monotonic() + 8.0
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung (using the inherited instance, or opening a fresh one)")
        else:
            time.sleep(0.01)
    meaning = {10: "the inherited instance served a call in the child instead of refusing",
               11: "a fresh instance in the child reported the parent's pid",
               12: "a fresh instance in the child read wrong bytes",
               13: "the child raised (traceback above)"}  # fmt: skip
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the forked child crashed: {signal.Signals(os.WTERMSIG(status)).name}")
    code = os.WEXITSTATUS(status)
    assert code == 0, f"forked child exit {code}: {meaning.get(code, '?')}"
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.wait(2.0)
    assert not wrong, f"{len(wrong)} preads in the parent returned wrong bytes around the fork"
    assert sum(counts) > before, "the parent's threads made no call after the fork"


def test_fork_while_threads_are_busy(scene: Scene) -> None:
    scene.run_child(scenario_fork_while_threads_are_busy)


# 8. close() with calls stuck in the kernel -------------------------------------------------------------------


def scenario_close_with_calls_stuck_in_the_kernel(scene: Scene) -> None:
    k = ksvc.open(**scene.selection)  # closed here, not by the scene
    udp = scene.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", 0))
    recv = scene.start("k.recv on a UDP socket with no datagram (Tier 1)", k.recv, udp.fileno(), 100)
    poll = scene.start("raw poll(NULL, 0, 60000) (Tier 2)", k.syscall, NR["poll"], 0, 0, 60000)
    time.sleep(SETTLE)
    scene.watch.step("k.close(timeout=0.5) with a recv and a 60 s poll pending", 2.5)
    t0 = time.monotonic()
    k.close(timeout=0.5)
    took = time.monotonic() - t0
    assert took < 2.0, f"k.close(timeout=0.5) took {took:.2f} s with calls stuck in the kernel"
    for b in (recv, poll):
        _, err = b.outcome(2.0)
        assert err is not None and isinstance(err, Exception), f"{b.what} returned {b.result!r} across close()"
    sender = scene.sock(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender.sendto(b"late datagram", udp.getsockname())
    time.sleep(0.1)
    gc.collect()


def test_close_is_bounded_with_calls_stuck_in_the_kernel(scene: Scene) -> None:
    scene.run_child(scenario_close_with_calls_stuck_in_the_kernel)


# 9. Bad arguments, compared with os.* -------------------------------------------------------------------------


def _raises(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - what is compared
        return exc
    return None


def _left_pending(k: ksvc.Ksvc, before: int, within: float = 0.3) -> int:
    """Entries a call left pending (beyond *before*) once *within* seconds passed for them to complete."""
    deadline = time.monotonic() + within
    while k.raw.pending() > before and time.monotonic() < deadline:
        time.sleep(0.005)
    return max(0, k.raw.pending() - before)


def _differs_from_os(k: ksvc.Ksvc, what: str, ours: Callable[[], Any], theirs: Callable[[], Any]) -> list[str]:
    """How ``ours()`` differs from ``theirs()`` (the os.* call) in what it raises; entries it leaves pending."""
    want = _raises(theirs)
    assert want is not None, f"the os call for {what} did not raise"
    before = k.raw.pending()
    got = _raises(ours)
    out = []
    if got is None:
        out.append(f"{what} returned instead of raising {type(want).__name__} like os.* does")
    elif not isinstance(got, type(want)):
        out.append(f"{what} raised {type(got).__name__}: {got}; os.* raises {type(want).__name__}: {want}")
    elif isinstance(want, OSError) and isinstance(got, OSError) and got.errno != want.errno:
        out.append(f"{what}: errno {got.errno}, os.* gives {want.errno}")
    left = _left_pending(k, before)
    if left:
        out.append(f"{what} left {left} entries pending (k.raw.pending() must return to where it was)")
    return out


_RAW_REJECTS = (ValueError, OverflowError, ksvc.NotOffloaded)


def _raw_not_rejected(
    k: ksvc.Ksvc, what: str, call: Callable[[], Any], allowed: tuple[type[BaseException], ...]
) -> list[str]:
    """A raw call that must be rejected with one of *allowed*, never run as something else."""
    before = k.raw.pending()
    out = []
    try:
        got = call()
    except allowed:
        pass
    except Exception as exc:  # noqa: BLE001 - reported
        out.append(
            f"{what} raised {type(exc).__name__}: {exc}; expected one of {', '.join(a.__name__ for a in allowed)}"
        )
    else:
        if isinstance(got, list):  # raw.submit accepted it: see what it ran (a thread, so inline dispatchers run)
            collect = Background("k.raw.completions()", k.raw.completions, len(got))
            with contextlib.suppress(AssertionError):
                done, _ = collect.outcome(1.0)
                got = [c.result for c in done or ()]
        out.append(f"{what} was accepted and gave {got!r} (getpid is {os.getpid()}, getppid {os.getppid()})")
    left = _left_pending(k, before)
    if left:
        out.append(f"{what} left {left} entries pending")
    return out


def scenario_bad_arguments(scene: Scene) -> None:
    k = scene.open()
    fd, data = scene.data_file(4096)
    r, w = scene.pipe()
    target = scene.fd(os.dup2(r, 200))  # a descriptor that truncation of a huge number would hit
    os.fstat(0)  # open (the child's stdin): k.close(2**63) would close it if it truncated the number
    scene.watch.step("bad arguments, each compared with os.*", 10.0)
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("k.pread(-1, 10, 0)", lambda: k.pread(-1, 10, 0), lambda: os.pread(-1, 10, 0)),
        ("k.fstat(-1)", lambda: k.fstat(-1), lambda: os.fstat(-1)),
        ("k.close(-1)", lambda: k.close(-1), lambda: os.close(-1)),
        ("k.close(2**63)", lambda: k.close(2**63), lambda: os.close(2**63)),
        ("k.close(2**32 + 200)", lambda: k.close(2**32 + target), lambda: os.close(2**32 + target)),
        ("k.pread(2**32 + fd, 1, 0)", lambda: k.pread(2**32 + fd, 1, 0), lambda: os.pread(2**32 + fd, 1, 0)),
        ('k.pread("x", 1, 0)', lambda: k.pread("x", 1, 0), lambda: os.pread("x", 1, 0)),  # type: ignore[arg-type]
        ("k.pread(fd, 1.5, 0)", lambda: k.pread(fd, 1.5, 0), lambda: os.pread(fd, 1.5, 0)),  # type: ignore[arg-type]
        ("k.pread(fd, 1, 1.5)", lambda: k.pread(fd, 1, 1.5), lambda: os.pread(fd, 1, 1.5)),  # type: ignore[arg-type]
        ("k.pread(fd, -1, 0)", lambda: k.pread(fd, -1, 0), lambda: os.pread(fd, -1, 0)),
        ("k.pread(fd, 2**63, 0)", lambda: k.pread(fd, 2**63, 0), lambda: os.pread(fd, 2**63, 0)),
        ("k.pread(fd, 1, -1)", lambda: k.pread(fd, 1, -1), lambda: os.pread(fd, 1, -1)),
        ("k.pread(fd, 1, 2**64)", lambda: k.pread(fd, 1, 2**64), lambda: os.pread(fd, 1, 2**64)),
        ("k.read(fd, -1)", lambda: k.read(fd, -1), lambda: os.read(fd, -1)),
        ('k.write(w, "str")', lambda: k.write(w, "str"), lambda: os.write(w, "str")),  # type: ignore[arg-type]
    ]
    failures = [f for what, ours, theirs in cases for f in _differs_from_os(k, what, ours, theirs)]
    for victim, by in ((0, "k.close(2**63)"), (target, f"k.close(2**32 + {target})")):
        try:
            os.fstat(victim)
        except OSError:
            failures.append(f"{by} closed descriptor {victim}")
    # The raw API has no os.* twin: a number, flag or argument out of range is rejected, never run as another.
    raw: list[tuple[str, Callable[[], Any], tuple[type[BaseException], ...]]] = [
        ("k.syscall(2**32 + getpid)", lambda: k.syscall(2**32 + NR["getpid"]), _RAW_REJECTS),
        ("k.raw.submit([(2**32 + getpid, (), 0)])", lambda: k.raw.submit([(2**32 + NR["getpid"], (), 0)]),
         _RAW_REJECTS),
        ("k.raw.submit([(getppid, (), 2**40)])", lambda: k.raw.submit([(NR["getppid"], (), 2**40)]),
         (ValueError, OverflowError)),
        ("k.syscall(getppid, 1.5)", lambda: k.syscall(NR["getppid"], 1.5), (TypeError,)),  # type: ignore[arg-type]
        ("k.raw.submit([(getppid, (1.5,), 0)])", lambda: k.raw.submit([(NR["getppid"], (1.5,), 0)]),  # type: ignore[list-item]
         (TypeError,)),
    ]  # fmt: skip
    failures += [f for what, call, allowed in raw for f in _raw_not_rejected(k, what, call, allowed)]
    assert not failures, f"{len(failures)} differences from os.* / the raw contract:\n  " + "\n  ".join(failures)
    assert k.pread(fd, 16, 0) == data[:16], "the instance does not work after the bad calls"


def test_bad_arguments_raise_what_os_raises(scene: Scene) -> None:
    scene.run_child(scenario_bad_arguments)
