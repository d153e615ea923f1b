"""W5: memory with 100 000 operations in flight, per preset, and across repeated runs.

Each preset runs in a child process of its own (``python -m
ksvc_host.bench.w5_memory PRESET OPS``) so one preset's heap does not hide
another's. The child opens the asyncio front end, starts OPS 64-byte reads
at once (those beyond the submit ring wait in the front end's backlog:
all are in flight from the caller's view), awaits them all, and does that
three times. Peak RSS is the kernel's high-water mark (VmHWM), reset
before each round; bytes per operation = (peak - RSS before) / OPS in the
first round. Leaks show as growth in Python's allocated blocks
(``sys.getallocatedblocks()`` after a collection) from round 1 to 3; RSS
growth is reported too, but the allocator keeps freed memory.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile

from ksvc_host.bench.harness import Measurement, Report

PRESETS = ("default", "server")
ROUNDS = 3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


async def _round(k: object, fd: int, ops: int) -> None:
    futs = [k.pread(fd, 64, (i * 64) & 0xFFFF) for i in range(ops)]  # type: ignore[attr-defined]
    results = await asyncio.gather(*futs)
    assert len(results) == ops and all(len(r) == 64 for r in results)


def child(preset: str, ops: int) -> dict[str, object]:
    """Measure one preset in this process; return the figures."""
    import ksvc_host as ksvc

    with tempfile.TemporaryFile() as f:
        f.write(os.urandom(1 << 16))
        f.flush()
        fd = f.fileno()

        async def main() -> dict[str, object]:
            async with ksvc.open_async(preset=preset) as k:
                await _round(k, fd, 1000)  # warm up: first-use allocations are not per-operation memory
                rounds = []
                for _ in range(ROUNDS):
                    before = _status_kib("VmRSS")
                    exact = _reset_peak()
                    await _round(k, fd, ops)
                    peak = _status_kib("VmHWM")
                    gc.collect()
                    rounds.append({"rss_before_kib": before, "peak_kib": peak, "rss_after_kib": _status_kib("VmRSS"),
                                   "peak_exact": exact, "blocks_after": sys.getallocatedblocks()})  # fmt: skip
                return {"preset": preset, "ops": ops, "rounds": rounds}

        return asyncio.run(main())


def run(report: Report, ops: int = 100_000, directory: str | None = None) -> None:
    """Measure W5 into *report* (one child process per preset)."""
    del directory
    report.say(f"W5: peak RSS with {ops:,} reads in flight, {ROUNDS} rounds per preset")
    for preset in PRESETS:
        m = Measurement("W5", "memory", f"asyncio front end ({preset})", ops=ops)
        proc = subprocess.run([sys.executable, "-m", "ksvc_host.bench.w5_memory", preset, str(ops)],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            m.status = "absent" if "SelectionError" in proc.stderr or "not installed" in proc.stderr else "failed"
            m.note = tail
            report.add(m)
            continue
        data = json.loads(proc.stdout)
        rounds = data["rounds"]
        first = rounds[0]  # the round that grows the heap; later rounds reuse what the allocator kept
        m.extra = {
            "bytes_per_op": round((first["peak_kib"] - first["rss_before_kib"]) * 1024 / ops),
            "peak_mib": round(max(r["peak_kib"] for r in rounds) / 1024, 1),
            "rss_growth_kib_round1_to_3": rounds[-1]["rss_after_kib"] - rounds[0]["rss_after_kib"],
            "python_blocks_growth_round1_to_3": rounds[-1]["blocks_after"] - rounds[0]["blocks_after"],
        }
        report.add(m)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]))))
