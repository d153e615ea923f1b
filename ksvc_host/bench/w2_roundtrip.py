"""W2: one entry's round trip through the channel, per component choice (p50, p99).

Two operations, each made one at a time so every sample is a full round
trip: a no-op (``getppid`` submitted as an entry, answered by the
dispatcher from the shared page: the channel alone) and a 1-byte
``pread`` of a cached file (Tier 1: the channel plus io_uring). Each pair
differs from the default stack in one component only.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import ksvc_host as ksvc
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.bench.harness import Absent, Measurement, Report, latency_stats

PAIRS: tuple[tuple[str, dict[str, Any], str, dict[str, Any]], ...] = (
    ("threaded dispatcher", {}, "inline dispatcher", {"dispatcher": "inline"}),
    ("eventfd notifier", {}, "futex notifier", {"notifier": "futex"}),
    ("ring sink", {}, "direct-wake sink", {"completion_sink": "direct-wake"}),
    ("basic backend", {}, "sqpoll backend", {"io_backend": "sqpoll"}),
)
"""(name, selection) of each side; the second is the design's faster option."""

_NR_GETPPID = SYSCALLS["getppid"]


def sample_reads(k: ksvc.Ksvc, fd: int, n: int) -> list[int]:
    """Nanoseconds of each of *n* 1-byte ``pread`` round trips, one at a time."""
    clock = time.perf_counter_ns
    pread = k.pread
    out = []
    for i in range(n):
        t = clock()
        pread(fd, 1, i & 4095)
        out.append(clock() - t)
    return out


def _sample(k: ksvc.Ksvc, op: str, fd: int, n: int) -> list[int]:
    if op != "no-op":
        return sample_reads(k, fd, n)
    clock = time.perf_counter_ns
    call = k.syscall
    out = []
    for _ in range(n):
        t = clock()
        call(_NR_GETPPID)
        out.append(clock() - t)
    return out


def measure_one(report: Report, case: str, name: str, selection: dict[str, Any], fd: int, n: int) -> Measurement:
    """Round trips of *case* on the stack *selection*."""
    m = Measurement("W2", case, name, ops=n)
    try:
        k = ksvc.open(**selection)
    except (LookupError, ValueError) as exc:
        m.status, m.note = "absent", str(Absent(f"{exc}"))
        return report.add(m)
    except OSError as exc:
        m.status, m.note = "failed", repr(exc)
        return report.add(m)
    try:
        if case == "no-op" and k.syscall(_NR_GETPPID) != os.getppid():
            m.status, m.note = "failed", "getppid through the channel differs from os.getppid()"
            return report.add(m)
        _sample(k, case, fd, min(1000, n))  # warm up
        samples = _sample(k, case, fd, n)
        m.seconds = sum(samples) / 1e9
        m.ops_per_s = n / m.seconds
        m.p50_us, m.p99_us = latency_stats(samples)
    finally:
        k.close()
    return report.add(m)


def run(report: Report, ops: int = 20_000, directory: str | None = None) -> None:
    """Measure W2 into *report*."""
    report.say(f"W2: round trip of one entry, {ops:,} samples per stack")
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        f.write(os.urandom(8192))
        f.flush()
        fd = f.fileno()
        for case in ("no-op", "pread 1 B"):
            for slow, slow_sel, fast, fast_sel in PAIRS:
                a = measure_one(report, case, slow, slow_sel, fd, ops)
                b = measure_one(report, case, fast, fast_sel, fd, ops)
                if a.p50_us and b.p50_us:
                    verdict = "faster" if b.p50_us < a.p50_us else "NOT faster"
                    report.say(f"    {fast} vs {slow}: p50 {a.p50_us / b.p50_us:.2f}x ({verdict})")


def verdicts(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """For each pair and case: is the design's faster option faster at p50?"""
    by = {(m.case, m.contender): m for m in measurements if m.workload == "W2" and m.status == "ok"}
    out = []
    for case in ("no-op", "pread 1 B"):
        for slow, _, fast, _ in PAIRS:
            a, b = by.get((case, slow)), by.get((case, fast))
            if a is None or b is None or not a.p50_us or not b.p50_us:
                continue
            out.append({"case": case, "pair": f"{fast} vs {slow}", "p50_ratio": a.p50_us / b.p50_us,
                        "p99_ratio": (a.p99_us or 0) / (b.p99_us or 1), "faster": b.p50_us < a.p50_us})  # fmt: skip
    return out
