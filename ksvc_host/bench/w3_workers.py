"""W3: Tier 2 under blocking load, fixed pool against lazy pool.

Blocking calls are real: ``flock(LOCK_SH)`` entries on a file this process
holds ``LOCK_EX`` on (through another open file), so they block in the
kernel on a worker until the benchmark unlocks. Measured, per pool:

* short Tier 2 calls (``fcntl(F_GETFL)``) per second, unloaded and while
  half of the fixed pool's workers are blocked;
* the latency of Tier 1 reads (1 byte ``pread``) unloaded and while every
  worker of the fixed pool's size is blocked: io_uring does not wait for
  workers, so the ratio should stay near 1 (the target is within 2x).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from typing import Any

import ksvc_host as ksvc
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.bench.harness import Measurement, Report, Target, latency_stats
from ksvc_host.bench.w2_roundtrip import sample_reads

WORKERS = 4
POOLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fixed", {"worker_pool": "fixed", "options": {"workers": WORKERS}}),
    ("lazy", {"worker_pool": "lazy", "options": {"max_workers": 4 * WORKERS}}),
)
_NR_FLOCK = SYSCALLS["flock"]


class _Blockers:
    """*n* flock(LOCK_SH) entries that block on a worker until :meth:`release`."""

    def __init__(self, k: ksvc.Ksvc, path: str, n: int) -> None:
        self.k = k
        self.holder = os.open(path, os.O_RDONLY)
        fcntl.flock(self.holder, fcntl.LOCK_EX)
        self.fds = [os.open(path, os.O_RDONLY) for _ in range(n)]
        self.ids = k.raw.submit([(_NR_FLOCK, (fd, fcntl.LOCK_SH), 0) for fd in self.fds])
        deadline = time.monotonic() + 5
        while k.instance.worker_pool.busy < n and time.monotonic() < deadline:
            time.sleep(0.001)  # until every blocker sits in the kernel on a worker

    def release(self) -> None:
        fcntl.flock(self.holder, fcntl.LOCK_UN)
        got = self.k.raw.completions(wait_for=len(self.ids))
        assert all(c.result == 0 for c in got), got
        for fd in (self.holder, *self.fds):
            os.close(fd)


def _short_calls(k: ksvc.Ksvc, fd: int, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        k.fcntl(fd, fcntl.F_GETFL)
    return n / (time.perf_counter() - t)


def run(report: Report, ops: int = 5_000, directory: str | None = None) -> None:
    """Measure W3 into *report*."""
    report.say(f"W3: Tier 2 under blocking load, {WORKERS} workers (fixed) vs lazy, {ops:,} calls per case")
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        f.write(os.urandom(8192))
        f.flush()
        fd = f.fileno()
        for pool, selection in POOLS:
            try:
                k = ksvc.open(**selection)
            except (LookupError, ValueError) as exc:
                report.add(Measurement("W3", "short calls", f"{pool} pool", status="absent", note=str(exc)))
                continue
            with k:
                _short_calls(k, fd, 200)
                m = Measurement("W3", "short calls", f"{pool} pool, unloaded", ops=ops)
                m.ops_per_s = _short_calls(k, fd, ops)
                report.add(m)
                blockers = _Blockers(k, f.name, WORKERS // 2)
                try:
                    m = Measurement("W3", "short calls", f"{pool} pool, {WORKERS // 2} workers blocked", ops=ops)
                    m.ops_per_s = _short_calls(k, fd, ops)
                    report.add(m)
                finally:
                    blockers.release()
                for label, n_block in (("unloaded", 0), (f"all {WORKERS} workers blocked", WORKERS)):
                    held = _Blockers(k, f.name, n_block) if n_block else None
                    try:
                        m = Measurement("W3", "tier1 latency", f"{pool} pool, {label}", ops=ops)
                        m.p50_us, m.p99_us = latency_stats(sample_reads(k, fd, ops))
                        report.add(m)
                    finally:
                        if held is not None:
                            held.release()
    for pool, _ in POOLS:
        report.targets.append(Target(
            f"W3 {pool} pool: Tier 1 p50 with every worker blocked within 2x of unloaded",
            f"W3/tier1 latency/{pool} pool, all {WORKERS} workers blocked", f"W3/tier1 latency/{pool} pool, unloaded",
            0.5, metric="p50_us", lower_is_better=True,
        ))  # fmt: skip
