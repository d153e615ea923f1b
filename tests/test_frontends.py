"""Blocking, asyncio, batch and raw front ends against ``os.*``, and their errors."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host.abi.syscalls import SYSCALLS

pytestmark = pytest.mark.usefixtures("lane_impl")  # lane.c and its pure-Python twin


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(os.urandom(1 << 16))
    return p


def test_blocking_helpers_equal_os(k: ksvc.Ksvc, data_file: Path, tmp_path: Path) -> None:
    fd = k.open(data_file, os.O_RDWR)
    dfd = os.open(data_file, os.O_RDWR)
    assert k.pread(fd, 4096, 123) == os.pread(dfd, 4096, 123)
    assert k.read(fd, 1000) == os.read(dfd, 1000)
    assert k.lseek(fd, 0, os.SEEK_CUR) == os.lseek(dfd, 0, os.SEEK_CUR) == 1000
    ba = bytearray(777)
    assert k.preadinto(fd, ba, 5) == 777 and bytes(ba) == os.pread(dfd, 777, 5)
    mv = memoryview(bytearray(100))
    assert k.readinto(fd, mv) == 100 and bytes(mv) == os.pread(dfd, 100, 1000)
    assert k.pwrite(fd, b"hello", 10) == 5 and os.pread(dfd, 5, 10) == b"hello"
    assert tuple(k.fstat(fd)) == tuple(os.fstat(dfd))
    assert tuple(k.stat(data_file)) == tuple(os.stat(data_file))
    assert k.fstat(fd).st_mtime_ns == os.fstat(dfd).st_mtime_ns
    assert k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(dfd, fcntl.F_GETFL)
    bufs = [bytearray(10), bytearray(20)]
    assert k.preadv(fd, bufs, 0) == 30 and bytes(bufs[0] + bufs[1]) == os.pread(dfd, 30, 0)
    assert k.pwritev(fd, [b"ab", b"cd"], 100) == 4 and os.pread(dfd, 4, 100) == b"abcd"
    assert k.getcwd() == os.getcwd()
    k.ftruncate(fd, 5000)
    assert os.fstat(dfd).st_size == 5000
    assert k.fsync(fd) is None and k.fdatasync(fd) is None
    k.close(fd)
    os.close(dfd)
    with pytest.raises(OSError) as info:
        k.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_path_helpers_and_errors_like_os(k: ksvc.Ksvc, tmp_path: Path) -> None:
    d = tmp_path / "dir"
    k.mkdir(d, 0o755)
    assert d.is_dir()
    with pytest.raises(FileExistsError) as info:
        k.mkdir(d)
    assert info.value.filename == d
    (d / "f").write_text("x")
    k.rename(d / "f", d / "g")
    k.symlink("g", d / "s")
    assert k.readlink(d / "s") == b"g" and k.lstat(d / "s").st_mode == os.lstat(d / "s").st_mode
    k.link(d / "g", d / "h")
    assert os.stat(d / "h").st_nlink == 2
    for name in ("s", "h", "g"):
        k.unlink(d / name)
    k.rmdir(d)
    assert not d.exists()
    with pytest.raises(FileNotFoundError):
        k.stat(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        k.open(tmp_path / "missing", os.O_RDONLY)
    assert k.access(tmp_path, os.R_OK) is True and k.access(tmp_path / "missing", os.R_OK) is False
    with pytest.raises(ValueError, match="null byte"):
        k.open("a\0b", os.O_RDONLY)


def test_pipe_and_sockets(k: ksvc.Ksvc) -> None:
    r, w = k.pipe()
    assert k.write(w, b"abc") == 3 and k.read(r, 10) == b"abc"
    k.close(r)
    k.close(w)
    srv = k.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    k.setsockopt(srv, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    assert k.getsockopt(srv, socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    k.bind(srv, ("127.0.0.1", 0))
    k.listen(srv, 8)
    host, port = k.getsockname(srv)
    cli = socket.create_connection((host, port))
    conn, peer = k.accept(srv)
    assert peer == cli.getsockname()
    cli.sendall(b"ping")
    assert k.recv(conn, 100) == b"ping"
    assert k.send(conn, b"pong") == 4 and cli.recv(100) == b"pong"
    assert k.getpeername(conn) == cli.getsockname()
    k.shutdown(conn, socket.SHUT_WR)
    assert cli.recv(10) == b""
    cli.close()
    for fd in (conn, srv):
        k.close(fd)


def test_tier0_from_the_shared_page(k: ksvc.Ksvc) -> None:
    assert (k.getpid(), k.getppid(), k.getuid(), k.geteuid(), k.getgid(), k.getegid(), k.getpgrp(), k.getsid()) == (
        os.getpid(),
        os.getppid(),
        os.getuid(),
        os.geteuid(),
        os.getgid(),
        os.getegid(),
        os.getpgrp(),
        os.getsid(0),
    )
    page = k.instance.shared_page
    assert page.field("release") == os.uname().release.encode()
    assert page.rlimit_nofile == __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]


def test_uname_equals_os_uname_and_follows_the_page(k: ksvc.Ksvc) -> None:
    assert k.uname() == os.uname()
    assert k.uname() is k.uname()  # built once while the page's bytes stay the same
    channel = k.instance.channel
    channel.write_page_field("nodename", b"renamed-host")  # as a sethostname() would show up there
    try:
        assert k.uname().nodename == "renamed-host"
        assert k.uname()[:1] + k.uname()[2:] == os.uname()[:1] + os.uname()[2:]
    finally:
        channel.write_page_field("nodename", os.uname().nodename.encode())
    assert k.uname() == os.uname()


def test_shared_page_statistics_move(kt: ksvc.Ksvc) -> None:
    page = kt.instance.shared_page
    before = page.entries_processed
    for _ in range(10):
        kt.fcntl(0, fcntl.F_GETFD)
    assert page.entries_processed >= before + 10


def test_bad_input_is_a_clear_error_and_the_instance_keeps_serving(k: ksvc.Ksvc) -> None:
    with pytest.raises(OSError) as info:
        k.pread(9999, 10, 0)
    assert info.value.errno == errno.EBADF
    r, w = os.pipe()
    os.write(w, b"data")
    with pytest.raises(OSError) as info:
        k.syscall(SYSCALLS["read"], r, 16, 4)
    assert info.value.errno == errno.EFAULT
    with pytest.raises(ksvc.RefusedSyscall):
        k.syscall(SYSCALLS["fork"])
    with pytest.raises(ksvc.NotOffloaded):
        k.syscall(2**32 - 1)
    with pytest.raises(TypeError):
        k.syscall(0, 1, 2, 3, 4, 5, 6, 7)
    assert k.read(r, 4) == b"data"  # still serving, the data was not consumed by the failed read
    os.close(r)
    os.close(w)


def test_batch_and_linked_batch(k: ksvc.Ksvc, data_file: Path) -> None:
    fd = os.open(data_file, os.O_RDONLY)
    b = k.batch()
    for i in range(100):
        b.pread(fd, 512, i * 512)
    b.fcntl(fd, fcntl.F_GETFL)
    b.pread(9999, 1, 0)
    out = b.run()
    whole = data_file.read_bytes()
    assert out[:100] == [whole[i * 512 : (i + 1) * 512] for i in range(100)]
    assert out[100] == fcntl.fcntl(fd, fcntl.F_GETFL)
    assert isinstance(out[101], OSError) and out[101].errno == errno.EBADF
    chain = k.batch(linked=True)
    chain.close(9999)
    chain.pread(fd, 10, 0)
    res = chain.run()
    assert res[0].errno == errno.EBADF and res[1].errno == errno.ECANCELED
    os.close(fd)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_asyncio_helpers_equal_os(data_file: Path, dispatcher: str) -> None:
    async def main() -> None:
        async with ksvc.open_async(io_backend="basic", dispatcher=dispatcher) as k:
            fd = await k.open(data_file, os.O_RDONLY)
            dfd = os.open(data_file, os.O_RDONLY)
            reads = await asyncio.gather(*(k.pread(fd, 4096, i * 4096) for i in range(16)))
            assert reads == [os.pread(dfd, 4096, i * 4096) for i in range(16)]
            assert await k.fcntl(fd, fcntl.F_GETFL) == fcntl.fcntl(dfd, fcntl.F_GETFL)
            with pytest.raises(OSError) as info:
                await k.pread(9999, 1, 0)
            assert info.value.errno == errno.EBADF
            assert k.getpid() == os.getpid()
            await k.close(fd)
            os.close(dfd)

    asyncio.run(main())


def test_asyncio_cancel_cancels_in_kernel_and_keeps_buffer_alive() -> None:
    async def main() -> None:
        async with ksvc.open_async() as k:
            r, w = os.pipe()
            task = asyncio.ensure_future(k.read(r, 100))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The kernel's completion for the cancelled read arrives; nothing is pending afterwards.
            for _ in range(100):
                if k._completer.pending_count() == 0:
                    break
                await asyncio.sleep(0.01)
            assert k._completer.pending_count() == 0
            os.write(w, b"after")
            assert await k.read(r, 100) == b"after"  # the cancelled read did not eat the data
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_raw_api_full_ring_is_eagain() -> None:
    with ksvc.open(submit_entries=16, dispatcher="inline") as k:
        ids = k.raw.submit([(SYSCALLS["getpid"], (), 0)] * 16)
        with pytest.raises(ksvc.ChannelFull) as info:
            k.raw.submit([(SYSCALLS["getpid"], (), 0)])
        assert info.value.errno == errno.EAGAIN
        got = k.raw.completions(wait_for=16)
        assert sorted(c.corr_id for c in got) == sorted(ids)
        assert all(c.result == os.getpid() for c in got)


def test_tier0_limits_and_clocks_equal_resource_and_time(k: ksvc.Ksvc) -> None:
    import resource
    import time

    for which in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC):
        assert k.getrlimit_soft(which) == resource.getrlimit(which)[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    try:
        k.refresh()
        assert k.getrlimit_soft(resource.RLIMIT_NOFILE) == soft - 1  # fresh after refresh()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with pytest.raises(ValueError, match="not on the shared page"):
        k.getrlimit_soft(resource.RLIMIT_STACK)
    before = time.monotonic_ns()
    k.refresh()
    assert before <= k.clock_monotonic_ns() <= time.monotonic_ns()
    assert abs(k.clock_realtime_ns() - time.time_ns()) < 1_000_000_000


def test_asyncio_helpers_are_coroutines_for_tasks_and_task_groups(data_file: Path) -> None:
    async def main() -> None:
        async with ksvc.open_async() as k:
            fd = os.open(data_file, os.O_RDONLY)
            want = os.pread(fd, 100, 7)
            assert await asyncio.create_task(k.pread(fd, 100, 7)) == want
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(k.pread(fd, 100, 7)), tg.create_task(k.pread_many(fd, 100, [7, 7]))]
            assert tasks[0].result() == want and tasks[1].result() == [want, want]
            assert k.getrlimit_soft(__import__("resource").RLIMIT_NOFILE) > 0 and k.getppid() == os.getppid()
            os.close(fd)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("call", "args"),
    [("pread", (-1, 10, 0)), ("pread", (2**31, 10, 0)), ("pread", ("3", 10, 0)), ("pread", (0, 1.5, 0)),
     ("pread", (0, 10, 2**64)), ("pread", (0, -1, 0)), ("close", (2**63,)), ("close", (-2**31 - 1,)),
     ("read", (-1, 10)), ("fstat", (2**40,)), ("lseek", (0, 2**63, 0)), ("pwrite", (-1, b"x", 0))],
)  # fmt: skip
def test_bad_arguments_raise_what_os_raises_and_leave_nothing(k: ksvc.Ksvc, call: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(Exception) as direct:
        getattr(os, call)(*args)
    with pytest.raises(Exception) as through:
        getattr(k, call)(*args)
    assert type(through.value) is type(direct.value), (through.value, direct.value)
    if isinstance(direct.value, OSError):
        assert through.value.errno == direct.value.errno  # type: ignore[attr-defined]
    assert k.raw.pending() == 0  # nothing registered, nothing submitted
    assert k.getcwd() == os.getcwd()  # still serving


def test_close_of_an_out_of_range_number_never_closes_another_descriptor(k: ksvc.Ksvc) -> None:
    r, w = os.pipe()
    try:
        for bogus in (2**32 + r, 2**63 + r, -(2**32) + r):
            with pytest.raises(OverflowError):
                k.close(bogus)
        os.fstat(r)  # still open
    finally:
        os.close(r)
        os.close(w)


def test_raw_entries_out_of_range_are_refused_before_anything_runs(k: ksvc.Ksvc) -> None:
    getpid = SYSCALLS["getpid"]
    with pytest.raises(ValueError, match="syscall number"):
        k.raw.submit([(2**32 + getpid, (), 0)])  # would run getpid if the high bits were dropped
    with pytest.raises(ValueError, match="flags"):
        k.raw.submit([(getpid, (), 1 << 40)])
    with pytest.raises(TypeError):
        k.raw.submit([(getpid, (1.5,), 0)])
    with pytest.raises(OverflowError):
        k.raw.submit([(getpid, (2**64,), 0)])
    with pytest.raises(ValueError, match="syscall number"):
        k.syscall(2**32 + getpid)
    assert k.raw.pending() == 0 and k.raw.completions() == []


def test_a_read_that_wins_the_race_with_its_cancellation_loses_nothing() -> None:
    # Cancellation is reported once the kernel is done; a read the kernel finished anyway delivers
    # its bytes instead of the cancellation.
    async def main() -> None:
        async with ksvc.open_async() as k:
            r, w = os.pipe()
            for _ in range(10):
                t = asyncio.create_task(k.read(r, 10))
                await asyncio.sleep(0.01)
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t
                assert k._completer.pending_count() == 0  # the kernel answered before we heard of it
                os.write(w, b"hello")
                assert await asyncio.wait_for(k.read(r, 10), 5) == b"hello"
            # The race itself: the data is in the pipe when the cancel is asked for.
            t = asyncio.create_task(k.read(r, 3))
            await asyncio.sleep(0.01)
            os.write(w, b"abcdef")
            t.cancel()
            try:
                got = await t
            except asyncio.CancelledError:
                got = b""
            while len(got) < 6:
                got += await asyncio.wait_for(k.read(r, 10), 5)
            assert got == b"abcdef"  # nothing lost, nothing twice, in order
            os.close(r)
            os.close(w)

    asyncio.run(main())
