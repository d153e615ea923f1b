"""``ksvc demo``: real calls through tiers 0, 1 and 2, each beside the direct call.

Every row shows the tier the call took, what KSVC returned and what the
same call made directly returned; the demo exits non-zero if any differ.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend.blocking import Ksvc
from ksvc_host.instance import build_instance


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 38 else text[:35] + "..."


def run_demo(*, io_backend: str | None = None, preset: str | None = None) -> int:
    """Run the demo; return 0 when every KSVC result equals the direct one."""
    t0 = time.perf_counter()
    inst = build_instance(preset=preset, io_backend=io_backend)
    k = Ksvc(inst)
    rows: list[tuple[str, int, Any, Any]] = []
    tmpdir = tempfile.mkdtemp(prefix="ksvc-demo-")
    path = os.path.join(tmpdir, "data.bin")
    payload = os.urandom(8192)
    with open(path, "wb") as f:
        f.write(payload)

    def row(label: str, syscall: str, via: Callable[[], Any], direct: Callable[[], Any]) -> None:
        tier = int(inst.router.route(SYSCALLS[syscall]).tier)
        try:
            got: Any = via()
        except OSError as exc:
            got = f"OSError({exc.errno})"
        try:
            want: Any = direct()
        except OSError as exc:
            want = f"OSError({exc.errno})"
        rows.append((label, tier, got, want))

    try:
        print(f"KSVC demo: {inst.selection.describe()}")
        print(f"channel: {inst.channel.kind}; dispatcher: {inst.dispatcher.mode}\n")
        row("getpid()", "getpid", k.getpid, os.getpid)
        row("getuid()", "getuid", k.getuid, os.getuid)
        row("getppid()", "getppid", k.getppid, os.getppid)
        fd = k.open(path, os.O_RDWR)
        dfd = os.open(path, os.O_RDWR)
        row(
            "open(data.bin) is a file",
            "openat",
            lambda: os.path.samestat(os.fstat(fd), os.stat(path)),
            lambda: True,
        )
        row(
            "pread(fd, 4096, 1000)",
            "pread64",
            lambda: k.pread(fd, 4096, 1000),
            lambda: os.pread(dfd, 4096, 1000),
        )
        row("read(fd, 100) x2", "read", lambda: k.read(fd, 100) + k.read(fd, 100),
            lambda: os.read(dfd, 100) + os.read(dfd, 100))  # fmt: skip
        row(
            "lseek(fd, 0, SEEK_CUR)",
            "lseek",
            lambda: k.lseek(fd, 0, os.SEEK_CUR),
            lambda: os.lseek(dfd, 0, os.SEEK_CUR),
        )
        row(
            "pwrite(fd, b'ksvc', 10)",
            "pwrite64",
            lambda: k.pwrite(fd, b"ksvc", 10),
            lambda: os.pwrite(dfd, b"ksvc", 10),
        )
        row("fstat(fd).st_size", "fstat", lambda: k.fstat(fd).st_size, lambda: os.fstat(dfd).st_size)
        row("stat(path)", "stat", lambda: tuple(k.stat(path)), lambda: tuple(os.stat(path)))
        row(
            "fcntl(fd, F_GETFL)",
            "fcntl",
            lambda: k.fcntl(fd, fcntl.F_GETFL),
            lambda: fcntl.fcntl(dfd, fcntl.F_GETFL),
        )
        row("fsync(fd)", "fsync", lambda: k.fsync(fd), lambda: os.fsync(dfd))
        row("pread(bad fd)", "pread64", lambda: k.pread(9999, 10, 0), lambda: os.pread(9999, 10, 0))
        row("stat(missing)", "stat", lambda: k.stat(path + ".missing"), lambda: os.stat(path + ".missing"))
        r, w = k.pipe()
        row("pipe: write+read", "pipe2", lambda: (k.write(w, b"hello"), k.read(r, 5)), lambda: (5, b"hello"))
        s = k.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        row(
            "socket+bind+listen",
            "bind",
            lambda: (k.bind(s, ("127.0.0.1", 0)), k.listen(s, 8)),
            lambda: (None, None),
        )
        row("getsockname(s) host", "getsockname", lambda: k.getsockname(s)[0], lambda: "127.0.0.1")
        row("getcwd()", "getcwd", k.getcwd, os.getcwd)
        for f in (fd, r, w, s):
            k.close(f)
        os.close(dfd)
    finally:
        k.close()
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)

    bad = 0
    print(f"{'CALL':<26} {'TIER':<5} {'THROUGH KSVC':<40} {'DIRECT':<40} SAME")
    for label, tier, got, want in rows:
        same = got == want
        bad += not same
        print(f"{label:<26} T{tier:<4} {_short(got):<40} {_short(want):<40} {'yes' if same else 'NO'}")
    elapsed = time.perf_counter() - t0
    print(f"\n{len(rows)} calls, {len(rows) - bad} identical to the direct call, {bad} different ({elapsed:.2f} s)")
    return 1 if bad else 0
