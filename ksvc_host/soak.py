"""``ksvc soak``: many mixed operations across every tier, then a count of what leaked.

Several threads (blocking front end) and one asyncio loop run a mix of
Tier 0, 1 and 2 calls against files and pipes, checking every result
against ``os.*``. Before and after, it counts open descriptors, threads
and resident memory; the report says how many operations ran, how many
were wrong or lost, and what leaked. Exit status 0 only when all are zero
and at least one preset ran: a run with no usable preset (no plugins
installed, or ``KSVC_PLUGINS`` leaving them out) reports ``"ok": false``
and an ``"error"`` naming what to install.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import resource
import tempfile
import threading
import time
from typing import Any

import ksvc_host
from ksvc_host.selection import PRESETS


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _worker(k: Any, path: str, data: bytes, ops: int, seed: int, errors: list[str], done: list[int]) -> None:
    rnd = random.Random(seed)
    fd = k.open(path, os.O_RDONLY)
    try:
        for i in range(ops):
            choice = rnd.randrange(6)
            off = rnd.randrange(0, len(data) - 4096)
            if choice == 0:
                ok = k.pread(fd, 4096, off) == data[off : off + 4096]
            elif choice == 1:
                ok = k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(fd, fcntl.F_GETFL)
            elif choice == 2:
                ok = k.getpid() == os.getpid()
            elif choice == 3:
                b = k.batch()
                for j in range(8):
                    b.pread(fd, 512, (off + j * 512) % (len(data) - 512))
                ok = b.run() == [data[(off + j * 512) % (len(data) - 512) :][:512] for j in range(8)]
            else:  # a stream, read to the end (4) or left after two results (5)
                offs = [rnd.randrange(0, len(data) - 4096) for _ in range(24)]
                stream = k.pread_iter(fd, 4096, offs, depth=8)
                want = [data[o : o + 4096] for o in offs]
                if choice == 4:
                    ok = list(stream) == want
                else:
                    ok = [next(stream), next(stream)] == want[:2]
                    stream.close()
            if not ok:
                errors.append(f"op {i} ({choice}) returned a wrong result")
            done[0] += 1
    finally:
        k.close(fd)


async def _async_part(path: str, data: bytes, ops: int, selection: dict[str, Any], errors: list[str]) -> int:
    async with ksvc_host.open_async(**selection) as k:
        fd = await k.open(path, os.O_RDONLY)
        n = 0
        for start in range(0, ops, 64):
            offs = [random.randrange(0, len(data) - 4096) for _ in range(min(64, ops - start))]
            got = await asyncio.gather(*(k.pread(fd, 4096, o) for o in offs))
            n += len(got)
            errors.extend("async pread mismatch" for o, g in zip(offs, got, strict=True) if g != data[o : o + 4096])
        await k.close(fd)
        return n


def run_soak(
    ops: int = 1_000_000, threads: int = 4, presets: list[str] | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Run the soak; return the report (see the module docstring).

    Without *presets*, every preset whose plugins are installed runs; when
    none is, nothing runs and the report carries ``"ok": False`` and an
    ``"error"`` sentence saying what to install.
    """
    if threads < 0:
        raise ValueError(f"--threads must be 0 or more, got {threads}")
    if ops < threads + 1:
        raise ValueError(
            f"--ops must be at least {threads + 1} (one per thread and one for the asyncio loop), got {ops}"
        )
    report: dict[str, Any] = {"presets": {}, "ok": True}
    if presets:
        names = list(presets)
    else:
        unusable = {p: _unavailable(p) for p in PRESETS}
        names = [p for p, why in unusable.items() if why is None]
        if not names:
            report["ok"] = False
            report["error"] = f"the soak ran nothing, as no preset is usable here: {unusable['default']}"
            return report
    data = os.urandom(1 << 20)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        for preset in names:
            before = (_fds(), threading.active_count(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            errors: list[str] = []
            counters = [[0] for _ in range(threads)]
            per_thread = ops // (threads + 1)
            t0 = time.monotonic()
            with ksvc_host.open(preset=preset) as k:
                ts = [threading.Thread(target=_worker, args=(k, f.name, data, per_thread, i, errors, counters[i]))
                      for i in range(threads)]  # fmt: skip
                for t in ts:
                    t.start()
                async_done = asyncio.run(_async_part(f.name, data, per_thread, {"preset": preset}, errors))
                while any(t.is_alive() for t in ts):
                    for t in ts:
                        t.join(1.0)
                    if not quiet:
                        print(f"  {preset}: {sum(c[0] for c in counters) + async_done:,} ops", flush=True)
            elapsed = time.monotonic() - t0
            time.sleep(0.1)  # let finished threads be reaped
            after = (_fds(), threading.active_count(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            total = sum(c[0] for c in counters) + async_done
            expected = per_thread * (threads + 1)
            entry = {
                "ops": total,
                "lost": expected - total,
                "wrong": len(errors),
                "leaked_fds": after[0] - before[0],
                "leaked_threads": after[1] - before[1],
                "max_rss_growth_kib": after[2] - before[2],
                "seconds": round(elapsed, 2),
                "first_errors": errors[:3],
            }
            report["presets"][preset] = entry
            report["ok"] = report["ok"] and not (
                entry["lost"] or entry["wrong"] or entry["leaked_fds"] or entry["leaked_threads"]
            )
            if not quiet:
                print(f"{preset}: {total:,} ops in {elapsed:.1f} s, lost {entry['lost']}, wrong {entry['wrong']}, "
                      f"leaked fds {entry['leaked_fds']}, threads {entry['leaked_threads']}, "
                      f"max RSS +{entry['max_rss_growth_kib']} KiB")  # fmt: skip
    return report


def _unavailable(preset: str) -> str | None:
    """Why *preset* cannot run here (the selection error: what to install), or ``None`` when it can."""
    from ksvc_host.errors import SelectionError
    from ksvc_host.plugins import get_plugin_manager
    from ksvc_host.selection import resolve

    try:
        resolve(get_plugin_manager(), preset)
        return None
    except SelectionError as exc:
        return str(exc)
