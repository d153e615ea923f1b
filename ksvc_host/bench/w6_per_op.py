"""W6: per-operation calls: one ``k.pread`` per call, from one thread, from 64 tasks, from threads sharing an instance.

Every case reads random page-aligned 4 KiB blocks of a page-cached 64 MiB
file (the one W1 builds, warmed first) and compares KSVC with a baseline
measured in the same run on the same offsets:

1. ``blocking k.pread loop``: one thread, ``k.pread`` vs ``os.pread``;
2. ``64 asyncio tasks await k.pread``: 64 tasks each awaiting ``k.pread``
   (asyncio front end, default preset, and again on the server preset as a
   case of its own) vs 64 tasks each awaiting ``asyncio.to_thread(os.pread)``;
3. ``8 threads sharing one instance``: 4 threads each blocked in ``k.read``
   on an empty pipe of its own for the whole measurement while 4 threads call
   ``k.pread``, vs one thread alone on the same instance with nothing else in
   flight: total reads per second, and the p99 of single calls;
4. ``QD64 random reads, server vs default``: the 64-task shape of case 2 on
   the server preset vs the default preset.

W6 is timed rather than counted: each side runs for a fixed time (1 s by
default; ``--scale`` scales it), three times, alternating which side goes
first. The ratio shown is the median of the three paired ratios, and both
rows show the run that gave it; ``ratio_range`` is the lowest to highest of
the three. Latency figures come from the run whose p99 ratio is the median
(it may be another run than the throughput's). A sample of each side's
reads is compared with ``os.pread`` before it is timed. Every side runs in
a thread of its own joined with a timeout, every await is bounded by
``asyncio.wait_for``: a hang fails the case and the run goes on.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ksvc_host as ksvc
from ksvc_host.bench.harness import Absent, Measurement, Report, Target, latency_stats
from ksvc_host.bench.w1_reads import BLOCK, FILE_SIZE, Data

W = "W6"
TASKS = 64
READERS = 4
BLOCKED = 4
REPEAT = 3
OFFSETS = 1 << 16
"""Offsets in the pool every side walks through (wrapping), drawn once per run of W6."""
CHUNK = 64
"""Blocking loops look at the clock once per this many reads (the clock costs as much as a cached read)."""
GRACE = 10.0
"""Seconds a side may overrun its duration before it counts as hung."""
SETUP_TIMEOUT = 30.0
SETTLE = 0.05
"""Seconds the blocked readers get to reach the kernel before the measurement starts."""

CASE_LOOP = "blocking k.pread loop"
CASE_TASKS = "64 asyncio tasks await k.pread"
CASE_TASKS_SERVER = "64 asyncio tasks await k.pread, server"
CASE_SHARED = "8 threads sharing one instance"
CASE_QD64 = "QD64 random reads, server vs default"

T = TypeVar("T")


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` on a daemon thread joined with *timeout*; its exception is re-raised here."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=body, name=f"ksvc-bench-w6 {what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} still running after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Sample:
    """One timed run of one side."""

    ops: int
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99_us(self) -> float:
        return latency_stats(self.latencies_ns)[1] if self.latencies_ns else 0.0


class Side:
    """One side of a case: ``setup`` once, ``sample`` checked, ``run(seconds)`` timed, ``teardown`` always."""

    name = "?"

    def __init__(self, data: Data) -> None:
        self.data = data

    def setup(self) -> None:
        """Prepare outside the timed region."""

    def sample(self, offsets: Sequence[int]) -> list[Any]:
        """The reads at *offsets* (compared with ``os.pread`` before timing)."""
        raise NotImplementedError

    def run(self, seconds: float) -> Sample:
        """Read for *seconds*; how many reads, how long (and per-call latencies, where measured)."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what ``setup`` made."""


def _chunks(offsets: Sequence[int]) -> list[Sequence[int]]:
    return [offsets[i : i + CHUNK] for i in range(0, len(offsets), CHUNK)]


def _read_for(pread: Callable[[int, int, int], Any], fd: int, chunks: list[Sequence[int]], seconds: float,
              start: int = 0) -> Sample:  # fmt: skip
    """``pread`` at the offsets of *chunks* (from chunk *start*, wrapping) for *seconds*."""
    clock = time.perf_counter
    n, i, done = len(chunks), start, 0
    for off in chunks[i % n][:8]:
        pread(fd, BLOCK, off)  # warm up: first-use costs of this thread are not per-call costs
    t0 = clock()
    deadline = t0 + seconds
    while True:
        chunk = chunks[i % n]
        for off in chunk:
            pread(fd, BLOCK, off)
        done += len(chunk)
        i += 1
        t = clock()
        if t >= deadline:
            return Sample(done, t - t0)


def _timed_reads(pread: Callable[[int, int, int], Any], fd: int, offsets: Sequence[int], seconds: float,
                 start: int = 0) -> Sample:  # fmt: skip
    """Like :func:`_read_for`, timing every call (for latency): one clock reading per call."""
    clock = time.perf_counter_ns
    n = len(offsets)
    for j in range(8):
        pread(fd, BLOCK, offsets[(start + j) % n])
    lat: list[int] = []
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    i, t = start, t0
    while t < deadline:
        pread(fd, BLOCK, offsets[i % n])
        t1 = clock()
        lat.append(t1 - t)
        t = t1
        i += 1
    return Sample(len(lat), (t - t0) / 1e9, lat)


def _open(preset: str) -> ksvc.Ksvc:
    try:
        return _bounded(lambda: ksvc.open(preset=preset), SETUP_TIMEOUT, f"open(preset={preset!r})")
    except (LookupError, ValueError) as exc:
        raise Absent(f"preset {preset!r} cannot be built here: {exc}") from exc


def _close(k: Any) -> None:
    _bounded(k.close, SETUP_TIMEOUT, "close")


# -- case 1: one blocking thread ----------------------------------------------------------------


class OsPreadLoop(Side):
    """``os.pread`` in a loop, one thread."""

    name = "os.pread loop"

    def sample(self, offsets: Sequence[int]) -> list[Any]:
        return [os.pread(self.data.fd, BLOCK, o) for o in offsets]

    def run(self, seconds: float) -> Sample:
        chunks = _chunks(self.data.offsets)
        return _bounded(lambda: _read_for(os.pread, self.data.fd, chunks, seconds), seconds + GRACE, self.name)


class KsvcPreadLoop(Side):
    """``k.pread`` in a loop, one thread, blocking front end."""

    def __init__(self, data: Data, preset: str = "default") -> None:
        super().__init__(data)
        self.preset = preset
        self.name = f"ksvc k.pread loop ({preset})"

    def setup(self) -> None:
        self.k = _open(self.preset)

    def sample(self, offsets: Sequence[int]) -> list[Any]:
        k, fd = self.k, self.data.fd
        return _bounded(lambda: [k.pread(fd, BLOCK, o) for o in offsets], GRACE, self.name)

    def run(self, seconds: float) -> Sample:
        chunks = _chunks(self.data.offsets)
        return _bounded(lambda: _read_for(self.k.pread, self.data.fd, chunks, seconds), seconds + GRACE, self.name)

    def teardown(self) -> None:
        _close(self.k)


# -- cases 2 and 4: 64 asyncio tasks ------------------------------------------------------------


class _AsyncTasks(Side):
    """*TASKS* tasks on an event loop of this side's own, each awaiting one read at a time."""

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()

    def _call(self, make: Callable[[], Any], timeout: float, what: str) -> Any:
        """Run the coroutine ``make()`` on the loop, bounded by ``wait_for`` and by a thread join."""
        return _bounded(lambda: self.loop.run_until_complete(asyncio.wait_for(make(), timeout)),
                        timeout + GRACE, f"{self.name}: {what}")  # fmt: skip

    async def _one(self, offset: int) -> Any:
        raise NotImplementedError

    async def _gather(self, offsets: Sequence[int]) -> list[Any]:
        return list(await asyncio.gather(*(self._one(o) for o in offsets)))

    def sample(self, offsets: Sequence[int]) -> list[Any]:
        got = self._call(lambda: self._gather(offsets), GRACE, "sample")
        self._call(lambda: self._lanes(0.02), GRACE, "warm-up")
        return got

    async def _lanes(self, seconds: float) -> Sample:
        offsets = self.data.offsets
        n = len(offsets)
        loop = asyncio.get_running_loop()
        counts = [0] * TASKS

        async def lane(j: int) -> None:
            i, done = j * (n // TASKS), 0
            while loop.time() < deadline:
                await self._one(offsets[i % n])
                i += 1
                done += 1
            counts[j] = done

        t0 = time.perf_counter()
        deadline = loop.time() + seconds
        await asyncio.gather(*(lane(j) for j in range(TASKS)))
        return Sample(sum(counts), time.perf_counter() - t0)

    def run(self, seconds: float) -> Sample:
        return self._call(lambda: self._lanes(seconds), seconds + GRACE, "run")

    def teardown(self) -> None:
        if not self.loop.is_running():
            self.loop.close()


class ToThreadTasks(_AsyncTasks):
    """64 tasks, each awaiting ``asyncio.to_thread(os.pread, ...)``."""

    name = "asyncio.to_thread(os.pread), 64 tasks"

    async def _one(self, offset: int) -> Any:
        return await asyncio.to_thread(os.pread, self.data.fd, BLOCK, offset)

    def teardown(self) -> None:
        try:
            self._call(self.loop.shutdown_default_executor, GRACE, "executor shutdown")
        finally:
            super().teardown()


class KsvcTasks(_AsyncTasks):
    """64 tasks, each awaiting ``k.pread`` of KSVC's asyncio front end."""

    def __init__(self, data: Data, preset: str) -> None:
        super().__init__(data)
        self.preset = preset
        self.name = f"ksvc asyncio, 64 tasks ({preset})"

    def setup(self) -> None:
        super().setup()
        try:
            self.k = self._call(self._open, SETUP_TIMEOUT, "open")
        except (LookupError, ValueError) as exc:
            self.loop.close()
            raise Absent(f"preset {self.preset!r} cannot be built here: {exc}") from exc
        except BaseException:
            super().teardown()
            raise

    async def _open(self) -> Any:
        return await ksvc.open_async(preset=self.preset)

    async def _one(self, offset: int) -> Any:
        return await self.k.pread(self.data.fd, BLOCK, offset)

    def teardown(self) -> None:
        try:
            self._call(self.k.aclose, SETUP_TIMEOUT, "aclose")
        finally:
            super().teardown()


# -- case 3: threads sharing one instance -------------------------------------------------------


class Shared:
    """One default instance both sides of case 3 use (opened by the first side's setup)."""

    def __init__(self) -> None:
        self.k: ksvc.Ksvc | None = None
        self.users = 0

    def acquire(self) -> ksvc.Ksvc:
        if self.k is None:
            self.k = _open("default")
        self.users += 1
        return self.k

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.k is not None:
            k, self.k = self.k, None
            _close(k)


class LoneThread(Side):
    """One thread calling ``k.pread``, nothing else in flight on the instance."""

    name = "1 thread alone, idle instance"

    def __init__(self, data: Data, shared: Shared) -> None:
        super().__init__(data)
        self.shared = shared

    def setup(self) -> None:
        self.k = self.shared.acquire()

    def sample(self, offsets: Sequence[int]) -> list[Any]:
        k, fd = self.k, self.data.fd
        return _bounded(lambda: [k.pread(fd, BLOCK, o) for o in offsets], GRACE, self.name)

    def run(self, seconds: float) -> Sample:
        return _bounded(lambda: _timed_reads(self.k.pread, self.data.fd, self.data.offsets, seconds),
                        seconds + GRACE, self.name)  # fmt: skip

    def teardown(self) -> None:
        self.shared.release()


class _Blocked:
    """*BLOCKED* threads, each in ``k.read`` on an empty pipe of its own until :meth:`release`."""

    def __init__(self, k: ksvc.Ksvc) -> None:
        self.pipes = [os.pipe() for _ in range(BLOCKED)]
        self.got: list[Any] = [None] * BLOCKED
        self.threads = [threading.Thread(target=self._read, args=(k, i), name=f"ksvc-bench-w6 blocked {i}",
                                         daemon=True) for i in range(BLOCKED)]  # fmt: skip
        for t in self.threads:
            t.start()
        time.sleep(SETTLE)
        self.check("before the measurement")

    def _read(self, k: ksvc.Ksvc, i: int) -> None:
        try:
            self.got[i] = k.read(self.pipes[i][0], 1)
        except BaseException as exc:  # noqa: BLE001 - reported by check
            self.got[i] = exc

    def check(self, when: str) -> None:
        """Raise unless every blocked thread is still blocked."""
        done = [i for i, t in enumerate(self.threads) if not t.is_alive()]
        if done:
            raise RuntimeError(f"blocked reader(s) {done} returned {when}: {[self.got[i] for i in done]!r}")

    def release(self) -> None:
        """One byte into each pipe; each reader must return it (joined with a timeout)."""
        try:
            for _, w in self.pipes:
                os.write(w, b"x")
            deadline = time.monotonic() + GRACE
            for t in self.threads:
                t.join(max(0.0, deadline - time.monotonic()))
            stuck = [i for i, t in enumerate(self.threads) if t.is_alive()]
            if stuck:
                raise TimeoutError(f"blocked reader(s) {stuck} did not return within {GRACE:.0f} s of their byte")
            wrong = [g for g in self.got if g != b"x"]
            if wrong:
                raise RuntimeError(f"blocked readers returned {wrong!r}, not b'x'")
        finally:
            for r, w in self.pipes:
                os.close(w)
                os.close(r)


class SharedReaders(LoneThread):
    """*READERS* threads calling ``k.pread`` while *BLOCKED* threads wait in ``k.read`` on the same instance."""

    name = f"{READERS} threads reading, {BLOCKED} blocked in k.read"

    def run(self, seconds: float) -> Sample:
        return _bounded(lambda: self._run(seconds), seconds + 2 * GRACE, self.name)

    def _run(self, seconds: float) -> Sample:
        k, fd, offsets = self.k, self.data.fd, self.data.offsets
        blocked = _Blocked(k)
        try:
            barrier = threading.Barrier(READERS)
            samples: list[Sample | BaseException | None] = [None] * READERS

            def reader(j: int) -> None:
                try:
                    barrier.wait(GRACE)
                    samples[j] = _timed_reads(k.pread, fd, offsets, seconds, start=j * (len(offsets) // READERS))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    samples[j] = exc

            threads = [threading.Thread(target=reader, args=(j,), name=f"ksvc-bench-w6 reader {j}", daemon=True)
                       for j in range(READERS)]  # fmt: skip
            for t in threads:
                t.start()
            deadline = time.monotonic() + seconds + GRACE
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in threads):
                raise TimeoutError(f"reader threads still running {GRACE:.0f} s after their {seconds:g} s")
            blocked.check("during the measurement")
        finally:
            blocked.release()
        got = [s for s in samples if isinstance(s, Sample)]
        if len(got) != READERS:
            raise RuntimeError(f"reader failed: {next(s for s in samples if not isinstance(s, Sample))!r}")
        return Sample(sum(s.ops for s in got), max(s.seconds for s in got), [x for s in got for x in s.latencies_ns])


# -- running and recording a case ---------------------------------------------------------------


def _pick_median(ratios: Sequence[float]) -> int:
    """Index of the run whose ratio is the median (the lower middle for an even count)."""
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    return order[(len(order) - 1) // 2]


def _range(ratios: Sequence[float]) -> str:
    return f"{min(ratios):.2f}x-{max(ratios):.2f}x"


def _measurement(case: str, side: Side, s: Sample, lat: Sample | None, runs: int) -> Measurement:
    m = Measurement(W, case, side.name, ops=s.ops, seconds=s.seconds, ops_per_s=s.rate)
    if lat is not None and lat.latencies_ns:
        m.p50_us, m.p99_us = latency_stats(lat.latencies_ns)
    m.extra["runs"] = runs
    return m


def measure_pair(report: Report, case: str, base: Side, other: Side, seconds: float, repeat: int,
                 target: str, latency: bool = False) -> tuple[Measurement, Measurement] | None:  # fmt: skip
    """Time *base* and *other* *repeat* times each, alternating; record both rows (base first)."""
    ready: list[Side] = []
    try:
        for side in (base, other):
            try:
                side.setup()
            except Absent as exc:
                report.say(f"  {W} {case}: skipped ({exc})")
                report.add(Measurement(W, case, side.name, status="absent", note=str(exc)))
                return None
            except Exception as exc:  # noqa: BLE001 - one case failing must not stop the run
                report.add(Measurement(W, case, side.name, status="failed", note=f"setup: {exc!r}"))
                return None
            ready.append(side)
        head = base.data.offsets[:TASKS]
        for side in ready:
            try:
                problem = base.data.check(head, side.sample(head))
            except Exception as exc:  # noqa: BLE001
                problem = repr(exc)
            if problem:
                report.add(Measurement(W, case, side.name, status="failed", note=f"wrong results: {problem}"))
                return None
        runs: dict[str, list[Sample]] = {base.name: [], other.name: []}
        for r in range(repeat):
            for side in (base, other) if r % 2 == 0 else (other, base):
                try:
                    runs[side.name].append(side.run(seconds))
                except Exception as exc:  # noqa: BLE001
                    report.add(Measurement(W, case, side.name, status="failed", note=f"run {r + 1}: {exc!r}"))
                    return None
    finally:
        for side in reversed(ready):
            try:
                side.teardown()
            except Exception as exc:  # noqa: BLE001
                report.say(f"  {W} {case}: teardown of {side.name} failed: {exc!r}")
    bs, os_ = runs[base.name], runs[other.name]
    ratios = [o.rate / b.rate if b.rate else 0.0 for b, o in zip(bs, os_, strict=True)]
    i = _pick_median(ratios)
    li = None
    if latency:
        p99s = [o.p99_us / b.p99_us if b.p99_us else 0.0 for b, o in zip(bs, os_, strict=True)]
        li = _pick_median(p99s)
    mb = _measurement(case, base, bs[i], bs[li] if li is not None else None, repeat)
    mo = _measurement(case, other, os_[i], os_[li] if li is not None else None, repeat)
    mo.extra["ratio_range"] = _range(ratios)
    if latency and li is not None:
        mo.extra["p99_ratio"] = f"{p99s[li]:.2f}x"
        mo.extra["p99_ratio_range"] = _range(p99s)
        mo.extra["blocked_throughout"] = BLOCKED
    mo.extra["target"] = target
    report.add(mb)
    report.add(mo)
    report.say(f"    {other.name} / {base.name}: {ratios[i]:.2f}x (median of {repeat}, {_range(ratios)}),"
               f" target {target}")  # fmt: skip
    return mb, mo


def _key(case: str, side: str) -> str:
    return f"{W}/{case}/{side}"


def run(report: Report, ops: int = 1000, directory: str | None = None, *, seconds: float | None = None,
        repeat: int = REPEAT) -> None:  # fmt: skip
    """Measure W6 into *report*.

    W6 is timed: *ops* is the duration of each side's run in milliseconds
    (``ksvc bench --scale`` scales it), unless *seconds* is given.
    """
    seconds = seconds if seconds is not None else max(0.02, ops / 1000)
    report.say(f"{W}: per-operation calls, random {BLOCK // 1024} KiB reads of a page-cached {FILE_SIZE >> 20} MiB"
               f" file, {seconds:g} s per side, {repeat} runs alternating")  # fmt: skip
    data = Data(OFFSETS, directory)
    try:
        shared = Shared()
        cases: list[tuple[str, Side, Side, str, bool]] = [
            (CASE_LOOP, OsPreadLoop(data), KsvcPreadLoop(data), ">=0.30x os.pread", False),
            (CASE_TASKS, ToThreadTasks(data), KsvcTasks(data, "default"), ">=10x to_thread", False),
            (CASE_TASKS_SERVER, ToThreadTasks(data), KsvcTasks(data, "server"), ">=10x to_thread", False),
            (CASE_SHARED, LoneThread(data, shared), SharedReaders(data, shared),
             "total >=1.0x alone, p99 <=2x alone", True),
            (CASE_QD64, KsvcTasks(data, "default"), KsvcTasks(data, "server"), ">=1.0x default", False),
        ]  # fmt: skip
        for case, base, other, target, latency in cases:
            data.warm()
            measure_pair(report, case, base, other, seconds, repeat, target, latency)
    finally:
        data.close()
    report.targets.extend(targets())


def targets() -> list[Target]:
    """W6's targets, each a ratio between the two rows of one case."""
    loop_k, loop_b = _key(CASE_LOOP, "ksvc k.pread loop (default)"), _key(CASE_LOOP, OsPreadLoop.name)
    shared_k, shared_b = _key(CASE_SHARED, SharedReaders.name), _key(CASE_SHARED, LoneThread.name)
    return [
        Target(f"{W} {CASE_LOOP}: k.pread >= 0.3x os.pread", loop_k, loop_b, 0.3),
        Target(f"{W} {CASE_TASKS}: ksvc (default) >= 10x asyncio.to_thread",
               _key(CASE_TASKS, "ksvc asyncio, 64 tasks (default)"), _key(CASE_TASKS, ToThreadTasks.name), 10.0),
        Target(f"{W} {CASE_TASKS_SERVER}: ksvc (server) >= 10x asyncio.to_thread",
               _key(CASE_TASKS_SERVER, "ksvc asyncio, 64 tasks (server)"), _key(CASE_TASKS_SERVER, ToThreadTasks.name),
               10.0),
        Target(f"{W} {CASE_SHARED}: total of {READERS} readers >= 1.0x one thread alone", shared_k, shared_b, 1.0),
        Target(f"{W} {CASE_SHARED}: p99 of {READERS} readers <= 2x one thread alone (shown inverted)",
               shared_k, shared_b, 0.5, metric="p99_us", lower_is_better=True),
        Target(f"{W} {CASE_QD64}: server >= 1.0x default", _key(CASE_QD64, "ksvc asyncio, 64 tasks (server)"),
               _key(CASE_QD64, "ksvc asyncio, 64 tasks (default)"), 1.0),
    ]  # fmt: skip


__all__ = ["measure_pair", "run", "targets"]
