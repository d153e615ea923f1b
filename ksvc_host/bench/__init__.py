"""``ksvc bench``: KSVC measured side by side with what users would pick instead.

Workloads (one module each): W1 random reads (:mod:`.w1_reads`), W2 round
trips per component (:mod:`.w2_roundtrip`), W3 workers under blocking load
(:mod:`.w3_workers`), W4 the shared page (:mod:`.w4_tier0`), W5 memory
(:mod:`.w5_memory`), W6 per-operation calls (:mod:`.w6_per_op`, timed:
its count is milliseconds per side), and the echo servers (:mod:`.echo`, run when named).
Each has a ``run(report, ops, directory)`` function; :mod:`.harness` holds
what they share. Optional contenders come from ``pip install
'ksvc-host[bench]'`` and are reported as absent without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ksvc_host.bench import echo, w1_reads, w2_roundtrip, w3_workers, w4_tier0, w5_memory, w6_per_op
from ksvc_host.bench.harness import Report

WORKLOADS: dict[str, tuple[Callable[..., None], int, str]] = {
    "w1": (w1_reads.run, 100_000, "random 4 KiB reads, queue depth 1 and 64"),
    "w2": (w2_roundtrip.run, 20_000, "round trip of one entry per component choice"),
    "w3": (w3_workers.run, 5_000, "fixed vs lazy pool under blocking load"),
    "w4": (w4_tier0.run, 1_000_000, "shared page vs the direct call"),
    "w5": (w5_memory.run, 100_000, "peak memory with operations in flight"),
    "echo": (echo.run, 1000, "echo servers: KSVC vs asyncio vs uvloop, five workloads"),
    "w6": (w6_per_op.run, 1000, "per-operation calls: k.pread from one thread, 64 tasks, shared threads"),
}
"""name -> (run function, default operation count, description)."""

DEFAULT = ("w1", "w2", "w3", "w4", "w5", "w6")
"""What ``ksvc bench`` runs when no workload is named (``echo`` runs when named)."""


def run(names: list[str], *, scale: float = 1.0, directory: str | None = None, report: Report | None = None,
        **_: Any) -> Report:  # fmt: skip
    """Run the named workloads (all when empty) with operation counts times *scale*."""
    report = report or Report()
    for name in names or DEFAULT:
        fn, ops, _desc = WORKLOADS[name]
        fn(report, ops=max(1, int(ops * scale)), directory=directory)
    return report


__all__ = ["WORKLOADS", "Report", "run"]
