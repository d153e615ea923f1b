"""W4: Tier 0, the shared page, against the syscalls it replaces."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import ksvc_host as ksvc
from ksvc_host.bench.harness import Measurement, Report


def _rate(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def run(report: Report, ops: int = 1_000_000, directory: str | None = None) -> None:
    """Measure W4 into *report*: each call *ops* times, direct and from the page."""
    del directory
    report.say(f"W4: Tier 0 (shared page) vs the direct call, {ops:,} calls each")
    with ksvc.open() as k:
        pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            ("getpid", os.getpid, k.getpid),
            ("getuid", os.getuid, k.getuid),
            ("uname", os.uname, k.uname),
        ]
        for name, direct, page in pairs:
            if direct() != page():
                report.add(Measurement("W4", name, "shared page", status="failed", note="differs from the direct call"))
                continue
            for label, fn in ((f"os.{name}()", direct), (f"k.{name}() (shared page)", page)):
                m = Measurement("W4", name, label, ops=ops)
                m.ops_per_s = _rate(fn, ops)
                m.seconds = ops / m.ops_per_s
                report.add(m)
