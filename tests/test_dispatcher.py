"""The dispatcher: LINKED and DRAIN across tiers, back-pressure, shutdown, strace proof of Tier 1."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend.core import Waiter

NR = SYSCALLS
LINK = L.SUBMIT_FLAG_LINKED
DRAIN = L.SUBMIT_FLAG_DRAIN


def _results(k: ksvc.Ksvc, entries: list[tuple[int, tuple[int, ...], int]]) -> dict[int, int]:
    ids = k.raw.submit(entries)
    got: dict[int, int] = {}
    while len(got) < len(ids):
        for c in k.raw.completions(wait_for=1):
            assert c.corr_id not in got, "a second completion for one entry"
            got[c.corr_id] = c.result
    return {i: got[c] for i, c in enumerate(ids)}


def test_linked_chain_runs_in_order_across_tiers(k: ksvc.Ksvc, tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"")
    fd = os.open(p, os.O_RDWR)
    data = native.alloc(4)
    native.ffi.memmove(data, b"ABCD", 4)
    a = native.address_of(data)
    # T1 write, T2 lseek back to 0, T1 read (position-based): the read sees the write only in order.
    out = native.alloc(4)
    res = _results(k, [
        (NR["write"], (fd, a, 4), LINK),
        (NR["lseek"], (fd, 0, os.SEEK_SET), LINK),
        (NR["read"], (fd, native.address_of(out), 4), 0),
    ])  # fmt: skip
    assert res == {0: 4, 1: 0, 2: 4}
    assert bytes(native.ffi.buffer(out, 4)) == b"ABCD"
    os.close(fd)


def test_failed_link_cancels_the_rest(k: ksvc.Ksvc) -> None:
    res = _results(k, [
        (NR["close"], (99999,), LINK),
        (NR["getpid"], (), LINK),
        (NR["fcntl"], (0, 1), 0),
        (NR["getppid"], (), 0),
    ])  # fmt: skip
    assert res[0] == -errno.EBADF
    assert res[1] == res[2] == -errno.ECANCELED
    assert res[3] == os.getppid()  # not part of the chain


def test_short_read_breaks_a_link(k: ksvc.Ksvc, tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"xy")
    fd = os.open(p, os.O_RDONLY)
    out = native.alloc(16)
    res = _results(k, [(NR["pread64"], (fd, native.address_of(out), 16, 0), LINK), (NR["getpid"], (), 0)])
    assert res == {0: 2, 1: -errno.ECANCELED}
    os.close(fd)


def test_linked_at_end_of_submit_ends_the_chain(k: ksvc.Ksvc) -> None:
    assert _results(k, [(NR["getpid"], (), LINK)]) == {0: os.getpid()}
    assert _results(k, [(NR["getppid"], (), 0)]) == {0: os.getppid()}


def test_drain_waits_for_everything_before(k: ksvc.Ksvc) -> None:
    r, w = os.pipe()
    buf = native.alloc(8)
    # A read blocks until data arrives; the DRAIN entry must not start before it completes.
    ids = k.raw.submit([(NR["read"], (r, native.address_of(buf), 8), 0), (NR["getpid"], (), DRAIN)])
    time.sleep(0.1)
    assert k.raw.completions() == []
    os.write(w, b"go")
    got = []
    while len(got) < 2:
        got += k.raw.completions(wait_for=1)
    assert [c.corr_id for c in got] == ids  # read first, then the drained entry
    os.close(r)
    os.close(w)


def test_bad_flags_are_einval_and_the_instance_keeps_serving(k: ksvc.Ksvc) -> None:
    with pytest.raises(ValueError, match="flags 0x80"):
        k.raw.submit([(NR["getpid"], (), 0x80)])  # refused before anything is written
    assert k.raw.pending() == 0
    # The same entry written into the ring by another writer reaches the dispatcher: EINVAL.
    w = Waiter()
    k._completer.submit_raw([(NR["getpid"], (0,) * 6, 0x80)], [w])
    k._completer.wait(w)
    assert w.result == -errno.EINVAL
    assert k.getpid() == os.getpid()


@pytest.mark.parametrize("nr", [470, 2**31, 2**32 - 1])
def test_unknown_numbers_complete_with_enosys(k: ksvc.Ksvc, nr: int) -> None:
    assert _results(k, [(nr, (), 0)]) == {0: -errno.ENOSYS}
    with pytest.raises(ksvc.NotOffloaded, match="unknown syscall number"):
        k.syscall(nr)


def test_refused_calls_never_execute(k: ksvc.Ksvc) -> None:
    before = set(os.listdir("/proc/self/task"))
    children_before = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()
    for name in ("fork", "vfork", "clone", "execve", "exit", "exit_group", "setuid", "mmap", "rt_sigreturn"):
        assert _results(k, [(NR[name], (0, 0, 0, 0, 0, 0), 0)]) == {0: -errno.EPERM}, name
        with pytest.raises(ksvc.RefusedSyscall, match=name):
            k.syscall(NR[name])
    assert Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text() == children_before
    assert set(os.listdir("/proc/self/task")) >= before
    assert k.getpid() == os.getpid()  # still serving


def test_back_pressure_small_rings_lose_nothing() -> None:
    with ksvc.open(submit_entries=16, complete_entries=16, options={"sq_entries": 8, "workers": 1}) as k:
        n = 2000
        entries = [(NR["getppid"] if i % 3 else NR["fcntl"], (0, 1) if i % 3 == 0 else (), 0) for i in range(n)]
        done: dict[int, int] = {}
        sent: list[int] = []
        i = 0
        while len(done) < n:
            if i < n:
                try:
                    sent += k.raw.submit(entries[i : i + 10])
                    i += 10
                except ksvc.ChannelFull:
                    pass
            for c in k.raw.completions(wait_for=0 if i < n else 1):
                assert c.corr_id not in done
                done[c.corr_id] = c.result
        assert sorted(done) == sorted(sent)
        assert all(v >= 0 for v in done.values())


def test_blocking_front_end_many_threads(tmp_path: Path) -> None:
    with ksvc.open() as k:
        errors: list[BaseException] = []
        r, w = os.pipe()

        def work() -> None:
            try:
                for _ in range(200):
                    assert k.getpid() == os.getpid()
                    assert k.fcntl(r, 1) == 0 or True
                    assert k.pread(fd, 16, 0) == b"0123456789abcdef"
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        path = str(tmp_path / "mt")
        with open(path, "wb") as f:
            f.write(b"0123456789abcdef")
        fd = os.open(path, os.O_RDONLY)
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        os.close(fd)
        os.unlink(path)
        os.close(r)
        os.close(w)
        assert not errors


def test_shutdown_completes_everything_in_flight() -> None:
    k = ksvc.open()
    r, w = os.pipe()
    buf = native.alloc(8)
    ids = k.raw.submit([(NR["read"], (r, native.address_of(buf), 8), 0)] + [(NR["getpid"], (), 0)] * 100)
    t0 = time.monotonic()
    k.instance.close(timeout=0.3)
    assert time.monotonic() - t0 < 5
    k.raw._completer.reap()
    got = {c.corr_id: c.result for c in k.raw.completions()}
    assert set(got) == set(ids)
    assert got[ids[0]] == -errno.ECANCELED  # the read that never got data was cancelled
    with pytest.raises(ksvc.ClosedError):
        k.getpid()
    with pytest.raises(ksvc.ClosedError):
        k.pread(0, 1, 0)
    os.close(r)
    os.close(w)


def test_fork_child_cannot_use_parent_channel(kt: ksvc.Ksvc) -> None:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            kt.getpid()
            os.write(wfd, b"used")
        except ksvc.ClosedError as exc:
            os.write(wfd, b"refused:" + str(exc).encode()[:200])
        with ksvc.open() as fresh:
            os.write(wfd, b"|fresh:%d" % int(fresh.getpid() == os.getpid()))
        os._exit(0)
    os.waitpid(pid, 0)
    out = os.read(rfd, 1000).decode()
    assert out.startswith("refused:") and "forked child" in out and out.endswith("|fresh:1")
    assert kt.getpid() == os.getpid()
    os.close(rfd)
    os.close(wfd)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_tier1_read_makes_no_read_syscall_on_the_fd(tmp_path: Path) -> None:
    p = tmp_path / "data"
    p.write_bytes(b"z" * 8192)
    script = textwrap.dedent(f"""
        import os, ksvc_host as ksvc
        fd = os.open({str(p)!r}, os.O_RDONLY)
        print("FD", fd, flush=True)
        with ksvc.open() as k:
            assert k.pread(fd, 4096, 0) == b"z" * 4096
            assert k.read(fd, 4096) == b"z" * 4096
    """)
    log = tmp_path / "trace"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,read,pread64,readv,preadv,preadv2,io_uring_enter",
                          "-o", str(log), sys.executable, "-c", script], capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0 and "ptrace" in out.stderr:
        pytest.skip(f"strace cannot trace here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
    fd = int(out.stdout.split()[1])
    trace = log.read_text()
    assert "io_uring_enter" in trace
    # Only what happens after our file is opened counts (the interpreter reads its own files first).
    lines = trace.splitlines()
    start = next(i for i, line in enumerate(lines) if str(p) in line and "open" in line)
    for line in lines[start + 1 :]:
        call = line.split(None, 1)[1] if " " in line else line
        for name in ("read(", "pread64(", "readv(", "preadv(", "preadv2("):
            assert not call.startswith(f"{name}{fd},"), line


def test_only_the_dispatchers_thread_runs_turns(tmp_path: Path) -> None:
    # One submitter per io_uring: the kernel ends a request when the thread that submitted it exits,
    # and a caller's thread may exit (or be interrupted) while others' requests are pending.
    p = tmp_path / "f"
    p.write_bytes(os.urandom(1 << 16))
    fd = os.open(p, os.O_RDONLY)
    try:
        with ksvc.open() as k:
            d = k.instance.dispatcher
            seen: set[int] = set()
            turn = d.turn.run

            def recorded() -> bool:
                seen.add(threading.get_ident())
                return turn()

            d.turn.run = recorded  # type: ignore[method-assign]

            def calls() -> None:
                for i in range(50):
                    assert k.pread(fd, 100, i * 100) == os.pread(fd, 100, i * 100)
                assert k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(fd, fcntl.F_GETFL)

            threads = [threading.Thread(target=calls) for _ in range(3)]
            for t in threads:
                t.start()
            calls()
            for t in threads:
                t.join(10)
            assert seen == {d.driver.thread.ident}  # type: ignore[union-attr]
    finally:
        os.close(fd)
