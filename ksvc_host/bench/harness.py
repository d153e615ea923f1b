"""What every workload shares: contenders, measurements, progress, the table and the JSON.

A workload builds :class:`Contender` objects and hands them to
:meth:`Report.measure`, which sets each up, checks its results against the
direct syscalls on a sample, times it, and records a :class:`Measurement`.
A contender whose package is not installed is recorded as *absent* (with
the ``pip install`` that brings it), one that fails as *failed*: neither
stops the run. Ratios are always between two measurements of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


class Absent(Exception):
    """A contender cannot run here: its package is missing (the message says how to get it)."""


@dataclass
class Measurement:
    """One contender in one case of one workload."""

    workload: str
    case: str
    contender: str
    status: str = "ok"
    """``ok``, ``absent`` or ``failed``."""
    ops: int = 0
    seconds: float = 0.0
    ops_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        """``workload/case/contender``: how targets name a measurement."""
        return f"{self.workload}/{self.case}/{self.contender}"


@dataclass
class Target:
    """A claim: *numerator* ≥ *minimum* × *denominator* (ops/s, or latency when ``lower_is_better``)."""

    description: str
    numerator: str
    denominator: str
    minimum: float
    metric: str = "ops_per_s"
    lower_is_better: bool = False


class Contender:
    """Something measured: ``setup`` once, ``run(ops)`` timed, ``teardown`` always.

    ``run`` returns what it read (a list) when *keep* is true, so the
    harness can compare it with the direct calls.
    """

    name = "?"

    def setup(self) -> None:
        """Prepare outside the timed region (open instances, files, loops)."""

    def run(self, items: Sequence[Any], keep: bool) -> list[Any] | None:
        """Do the work on *items*; return the results when *keep*."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what ``setup`` made."""


def _latency(m: Measurement) -> str:
    if m.p50_us is None:
        return ""
    return f"  p50 {m.p50_us:8.1f} us" + (f"  p99 {m.p99_us:8.1f} us" if m.p99_us is not None else "")


def latency_stats(samples_ns: Sequence[int]) -> tuple[float, float]:
    """p50 and p99 in microseconds."""
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 / 1000, p99 / 1000


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from ksvc_host import fastpath

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "fast_path": fastpath.IMPLEMENTATION,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


class Report:
    """Collects measurements, prints progress on *out*, and evaluates targets."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.measurements: list[Measurement] = []
        self.targets: list[Target] = []
        self.machine = machine()

    def say(self, text: str) -> None:
        """One progress line."""
        print(text, file=self.out, flush=True)

    def add(self, m: Measurement) -> Measurement:
        """Record *m* and print it."""
        self.measurements.append(m)
        if m.status == "ok":
            rate = f"{m.ops_per_s:>12,.0f} ops/s" if m.ops_per_s is not None else ""
            lat = _latency(m)
            self.say(f"  {m.workload} {m.case:<14} {m.contender:<36} {rate}{lat}")
        else:
            self.say(f"  {m.workload} {m.case:<14} {m.contender:<36} {m.status}: {m.note}")
        return m

    def measure(
        self, workload: str, case: str, contender: Contender, items: Sequence[Any],
        check: Callable[[Sequence[Any], list[Any]], str | None] | None = None, sample: int = 1000,
        repeat: int = 1, before: Callable[[], None] | None = None,
    ) -> Measurement:
        """Set up, check a sample against *check*, time *items* (best of *repeat*), tear down.

        *before* runs ahead of every timed run, outside the timing (e.g. re-warming a cache).
        """
        m = Measurement(workload, case, contender.name, ops=len(items))
        try:
            contender.setup()
        except Absent as exc:
            m.status, m.note = "absent", str(exc)
            return self.add(m)
        except Exception as exc:  # noqa: BLE001 - one contender failing must not stop the run
            m.status, m.note = "failed", f"setup: {exc!r}"
            return self.add(m)
        try:
            if check is not None:
                head = items[:sample]
                problem = check(head, contender.run(head, True) or [])
                if problem:
                    m.status, m.note = "failed", f"wrong results: {problem}"
                    return self.add(m)
            times = []
            for _ in range(max(1, repeat)):
                if before is not None:
                    before()
                t0 = time.perf_counter()
                contender.run(items, False)
                times.append(time.perf_counter() - t0)
            m.seconds = min(times)
            m.ops_per_s = len(items) / m.seconds if m.seconds > 0 else None
            if repeat > 1:
                m.extra["runs"] = len(times)
                m.extra["spread"] = f"{max(times) / min(times) - 1:.0%}"
        except Exception as exc:  # noqa: BLE001
            m.status, m.note = "failed", repr(exc)
        finally:
            try:
                contender.teardown()
            except Exception as exc:  # noqa: BLE001
                m.note = (m.note + f"; teardown: {exc!r}").lstrip("; ")
        return self.add(m)

    def get(self, key: str) -> Measurement | None:
        """The measurement named ``workload/case/contender``."""
        return next((m for m in self.measurements if m.key == key and m.status == "ok"), None)

    def ratio(self, numerator: str, denominator: str, metric: str = "ops_per_s") -> float | None:
        """numerator / denominator for *metric*, or ``None`` when either is missing."""
        a, b = self.get(numerator), self.get(denominator)
        if a is None or b is None:
            return None
        x, y = getattr(a, metric), getattr(b, metric)
        if not x or not y:
            return None
        return float(x) / float(y)

    def evaluate(self) -> list[dict[str, Any]]:
        """Each target with its measured ratio and whether it is met."""
        out = []
        for t in self.targets:
            r = self.ratio(t.numerator, t.denominator, t.metric)
            if r is not None and t.lower_is_better:
                r = 1 / r  # "numerator's latency is r times better"
            met = None if r is None else r >= t.minimum
            out.append({**asdict(t), "ratio": r, "met": met})
        return out

    def _groups(self) -> list[tuple[tuple[str, str], list[Measurement], Measurement | None]]:
        """Measurements per (workload, case), in order, with the row ratios are taken to (the first, if ok)."""
        groups: dict[tuple[str, str], list[Measurement]] = {}
        for m in self.measurements:
            groups.setdefault((m.workload, m.case), []).append(m)
        return [(key, ms, ms[0] if ms[0].status == "ok" else None) for key, ms in groups.items()]

    def table(self) -> str:
        """Results as text: one block per workload and case, then the targets."""
        lines: list[str] = []
        for (workload, case), ms, base in self._groups():
            lines.append(f"\n{workload} {case}" + (f"  (ratios to: {base.contender})" if base else ""))
            for m in ms:
                if m.status != "ok":
                    lines.append(f"  {m.contender:<40} {m.status}: {m.note}")
                    continue
                rate = f"{m.ops_per_s:>12,.0f} ops/s" if m.ops_per_s is not None else " " * 18
                ratio = ""
                if base is not None and m.ops_per_s and base.ops_per_s:
                    ratio = f"  {m.ops_per_s / base.ops_per_s:6.2f}x"
                lat = _latency(m)
                extra = "  " + " ".join(f"{k}={v}" for k, v in m.extra.items()) if m.extra else ""
                lines.append(f"  {m.contender:<40} {rate}{ratio}{lat}{extra}")
        results = self.evaluate()
        if results:
            lines.append("\ntargets")
            for r in results:
                verdict = "n/a " if r["met"] is None else ("met " if r["met"] else "MISS")
                got = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
                lines.append(f"  [{verdict}] {r['description']}: {got} (need {r['minimum']:.2f}x)")
        return "\n".join(lines).lstrip("\n")

    def markdown(self) -> str:
        """Results as Markdown tables (what the README's Performance section shows)."""
        lines: list[str] = []
        for (workload, case), ms, base in self._groups():
            lines += [f"\n**{workload} {case}**\n", "| contender | ops/s | ratio | p50 us | p99 us | notes |",
                      "|---|---:|---:|---:|---:|---|"]  # fmt: skip
            for m in ms:
                if m.status != "ok":
                    lines.append(f"| {m.contender} | {m.status} | | | | {m.note} |")
                    continue
                rate = f"{m.ops_per_s:,.0f}" if m.ops_per_s else ""
                ratio = f"{m.ops_per_s / base.ops_per_s:.2f}x" if base and m.ops_per_s and base.ops_per_s else ""
                p50 = f"{m.p50_us:.1f}" if m.p50_us is not None else ""
                p99 = f"{m.p99_us:.1f}" if m.p99_us is not None else ""
                notes = ", ".join(f"{k} {v}" for k, v in m.extra.items() if k not in ("runs", "spread"))
                lines.append(f"| {m.contender} | {rate} | {ratio} | {p50} | {p99} | {notes} |")
        results = self.evaluate()
        if results:
            lines += ["\n**Targets**\n", "| target | measured | needed | |", "|---|---:|---:|---|"]
            for r in results:
                got = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
                verdict = "n/a" if r["met"] is None else ("met" if r["met"] else "missed")
                lines.append(f"| {r['description']} | {got} | {r['minimum']:.2f}x | {verdict} |")
        return "\n".join(lines).lstrip("\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """A report rebuilt from :meth:`to_json` output (to print it again, e.g. as Markdown)."""
        r = cls(out=sys.stderr)
        r.machine = data.get("machine", r.machine)
        r.measurements = [Measurement(**m) for m in data.get("measurements", [])]
        r.targets = [Target(**{k: t[k] for k in Target.__dataclass_fields__}) for t in data.get("targets", [])]
        return r

    def to_json(self) -> dict[str, Any]:
        """Everything, for machines."""
        return {
            "machine": self.machine,
            "measurements": [asdict(m) for m in self.measurements],
            "targets": self.evaluate(),
        }

    def write_json(self, path: str) -> None:
        """Write :meth:`to_json` to *path*."""
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)


def median(values: Sequence[float]) -> float:
    """The median (a thin alias kept for workloads)."""
    return float(statistics.median(values))
