"""``ksvc bench echo``: the five echo workloads of docs/design.md §7 against KSVC, asyncio and uvloop servers.

Each server runs in a child process of its own; the load generator keeps
one message in flight per connection (send, wait for the whole echo, check
every byte, send the next). By default it is the C program of
:mod:`.loadgen` (built on demand), whose CPU is nearly all the kernel's
loopback TCP work; :func:`generate_python` does the same in Python (plain
``epoll`` over non-blocking sockets) and is used when no C compiler is
there, or with ``generator="python"``. Which one produced a row, and its
CPU share of the wall time, are reported beside each result so a
saturated generator is visible.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ksvc_host.bench import loadgen
from ksvc_host.bench.echo_servers import KINDS
from ksvc_host.bench.harness import Measurement, Report, Target, latency_stats
from ksvc_host.bench.loadgen import EchoMismatch

WORKLOADS: dict[str, tuple[int, int, int]] = {
    "light": (4, 1_000, 64),
    "medium": (50, 2_000, 64),
    "heavy": (100, 2_000, 128),
    "bulk": (20, 500, 4096),
    "storm": (200, 1_000, 64),
}
"""name -> (connections, messages per connection, message size)."""

GENERATORS = ("c", "python")
"""``c``: :mod:`.loadgen` (the Python one when it cannot be built); ``python``: :func:`generate_python`."""


def generate(port: int, conns: int, msgs: int, size: int, generator: str = "c",
             say: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Drive *conns* connections of *msgs* messages with *generator*; rate, latencies, CPU share and generator."""
    if generator == "python":
        return {**generate_python(port, conns, msgs, size), "generator": "python"}
    if generator != "c":
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    return loadgen.generate(port, conns, msgs, size, say=say)


def generate_python(port: int, conns: int, msgs: int, size: int) -> dict[str, Any]:
    """The generator in Python: *conns* connections of *msgs* messages; rate, latencies, CPU share."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    payloads = [os.urandom(size) for _ in range(conns)]
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    left = [msgs] * conns
    got = [bytearray() for _ in range(conns)]
    sent_at = [0] * conns
    lat: list[int] = []
    ep = select.epoll()
    clock = time.perf_counter_ns
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i, s in enumerate(socks):
        ep.register(s.fileno(), select.EPOLLIN)
        sent_at[i] = clock()
        s.sendall(payloads[i])
    active = conns
    try:
        while active:
            for fd, _ in ep.poll(10.0) or _timeout():
                i = by_fd[fd]
                data = socks[i].recv(65536)
                if not data:
                    raise ConnectionError(f"server closed connection {i} with {left[i]} messages to go")
                buf = got[i]
                buf += data
                if len(buf) < size:
                    continue
                if len(buf) > size or buf != payloads[i]:
                    raise EchoMismatch(f"connection {i}: echo differs from what was sent")
                now = clock()
                lat.append(now - sent_at[i])
                buf.clear()
                left[i] -= 1
                if left[i]:
                    sent_at[i] = now
                    socks[i].sendall(payloads[i])
                else:
                    active -= 1
                    ep.unregister(fd)
    finally:
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        ep.close()
        for s in socks:
            s.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    p50, p99 = latency_stats(lat)
    return {"msgs_per_s": conns * msgs / wall, "p50_us": p50, "p99_us": p99, "generator_cpu": cpu / wall}


def _timeout() -> list[Any]:
    raise TimeoutError("no echo for 10 s: the server stalled")


class ServerProcess:
    """One echo server in a child process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, "-m", "ksvc_host.bench.echo_servers", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        self.absent = ""
        self.port = 0
        if line[:1] == ["ready"]:
            self.port = int(line[1])
        elif line[:1] == ["absent:"]:
            self.absent = " ".join(line[1:])
        else:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"echo server {kind!r} did not start: {err.strip().splitlines()[-1:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Close its stdin and wait for it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


TARGET_WORKLOADS = ("medium", "storm")
"""The workloads the targets name: measured in every round (the others in the first only)."""
ROUNDS = 3
"""Rounds of every server in turn; a row is the median round, its ``spread`` the lowest to highest msg/s."""


def _measure(server: ServerProcess, kind: str, name: str, scale: float, generator: str,
             say: Any) -> Measurement:  # fmt: skip
    conns, msgs, size = WORKLOADS[name]
    per_conn = max(1, int(msgs * scale))
    m = Measurement("echo", name, kind, ops=conns * per_conn)
    if server.absent:
        m.status, m.note = "absent", server.absent
        return m
    try:
        generate(server.port, min(conns, 4), 20, size, generator, say)  # warm up
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        r = generate(server.port, conns, per_conn, size, generator, say)
        server_cpu = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    except (OSError, EchoMismatch, TimeoutError) as exc:
        m.status, m.note = "failed", repr(exc)
        return m
    m.ops_per_s, m.p50_us, m.p99_us = r["msgs_per_s"], r["p50_us"], r["p99_us"]
    m.seconds = m.ops / m.ops_per_s
    m.extra = {"generator": r["generator"], "generator_cpu": f"{r['generator_cpu']:.0%}",
               "server_cpu": f"{server_cpu:.0%}"}  # fmt: skip
    if "max_us" in r:  # the C generator: the slowest echo shows a stall that the percentiles hide
        m.extra["max_us"] = round(r["max_us"])
    return m


def _median(rounds: list[Measurement]) -> Measurement:
    """The median round (by msg/s) of one server on one workload, with the spread of all rounds."""
    ok = sorted((m for m in rounds if m.status == "ok"), key=lambda m: m.ops_per_s or 0.0)
    if not ok:
        return rounds[0]
    mid = ok[len(ok) // 2]
    if len(ok) > 1:
        mid.extra["runs"] = len(ok)
        mid.extra["spread"] = f"{ok[0].ops_per_s:,.0f}-{ok[-1].ops_per_s:,.0f} msg/s"
    return mid


def run(report: Report, ops: int = 1000, directory: str | None = None, generator: str = "c",
        rounds: int = ROUNDS) -> None:  # fmt: skip
    """Measure every server on every workload into *report* (*ops* / 1000 scales the message counts).

    The servers take turns, *rounds* times, on the target workloads (the machine's noise moves
    neighbouring runs together; alternating keeps the ratios fair). *generator* is ``"c"`` (the
    default; the Python one stands in, and says so, when no compiler is there) or ``"python"``;
    each row's ``extra`` records which one measured it.
    """
    del directory
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    scale = ops / 1000
    report.say("echo: " + ", ".join(f"{n} {c}x{m}x{s}B" for n, (c, m, s) in WORKLOADS.items())
               + f"; {', '.join(TARGET_WORKLOADS)} in {rounds} rounds, the others once")  # fmt: skip
    if generator == "c":
        path, reason = loadgen.binary()
        report.say(f"echo: load generator: C ({path})" if path else
                   f"echo: load generator: Python (the C one is not available: {reason})")  # fmt: skip
    else:
        report.say("echo: load generator: Python (asked for)")
    got: dict[tuple[str, str], list[Measurement]] = {}
    for r in range(max(1, rounds)):
        for kind in KINDS:
            names = list(WORKLOADS) if r == 0 else list(TARGET_WORKLOADS)
            try:
                server = ServerProcess(kind)
            except RuntimeError as exc:
                for name in names:
                    got.setdefault((name, kind), []).append(Measurement("echo", name, kind, status="failed",
                                                                        note=str(exc)))  # fmt: skip
                continue
            try:
                for name in names:
                    got.setdefault((name, kind), []).append(_measure(server, kind, name, scale, generator, report.say))
            finally:
                server.stop()
        report.say(f"echo: round {r + 1} of {rounds} done")
    for name in WORKLOADS:
        for kind in KINDS:
            if (name, kind) in got:
                report.add(_median(got[(name, kind)]))
    for name in ("medium", "storm"):
        for style in ("protocol", "streams"):
            ksvc, uvloop = f"echo/{name}/ksvc {style} (default)", f"echo/{name}/uvloop {style}"
            report.targets.append(Target(f"echo {name}: ksvc {style} (default) >= 1.0x uvloop {style} msg/s",
                                         ksvc, uvloop, 1.0))
            report.targets.append(Target(f"echo {name}: ksvc {style} (default) p99 no worse than uvloop {style}",
                                         ksvc, uvloop, 1.0, metric="p99_us", lower_is_better=True))
    report.targets.append(Target("echo storm: ksvc protocol (server) >= 1.0x ksvc protocol (default) msg/s",
                                 "echo/storm/ksvc protocol (server)", "echo/storm/ksvc protocol (default)", 1.0))
