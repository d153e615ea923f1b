"""Every offloaded syscall, made directly and through KSVC: same result, same bytes.

Each test builds two identical situations (two files with the same
content, two sockets, two buffers), makes the call directly with
``syscall(2)`` on one and through KSVC on the other, and compares the
return value and every byte the kernel wrote.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host import native
from ksvc_host.abi.syscalls import SYSCALLS

NR = SYSCALLS
ffi = native.ffi
AT_FDCWD = -100


def direct(nr: int, *args: int) -> int:
    """The syscall made here, now: result or -errno."""
    return native.syscall_u64(nr, tuple(a & 0xFFFF_FFFF_FFFF_FFFF for a in args) + (0,) * (6 - len(args)))


def via(k: ksvc.Ksvc, nr: int, *args: int) -> int:
    """The syscall through KSVC: result or -errno."""
    try:
        return int(k.syscall(nr, *args))
    except OSError as exc:
        return -exc.errno  # type: ignore[operator]


def buf(n: int) -> tuple[Any, int]:
    mem = native.alloc(n)
    return mem, native.address_of(mem)


def cstr(s: str | bytes) -> tuple[Any, int]:
    raw = os.fsencode(s) + b"\0"
    mem = ffi.new("char[]", raw)
    return mem, native.address_of(mem)


def both(k: ksvc.Ksvc, nr: int, make: Callable[[str], tuple[int, ...]]) -> tuple[int, int]:
    """Run *nr* directly with ``make("d")`` and through KSVC with ``make("k")``."""
    return direct(nr, *make("d")), via(k, nr, *make("k"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    data = bytes(range(256)) * 64
    out = {}
    for side in "dk":
        p = tmp_path / f"{side}.bin"
        p.write_bytes(data)
        out[side] = p
    return out


# -- reads and writes -----------------------------------------------------------------


def test_read_moves_position_like_direct(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    fds = {s: os.open(files[s], os.O_RDONLY) for s in "dk"}
    bufs = {s: buf(1000) for s in "dk"}
    for _ in range(3):
        r = both(k, NR["read"], lambda s: (fds[s], bufs[s][1], 1000))
        assert r[0] == r[1] == 1000
        assert bytes(ffi.buffer(bufs["d"][0], 1000)) == bytes(ffi.buffer(bufs["k"][0], 1000))
        assert os.lseek(fds["d"], 0, os.SEEK_CUR) == os.lseek(fds["k"], 0, os.SEEK_CUR)
    for fd in fds.values():
        os.close(fd)


@pytest.mark.parametrize("offset", [0, 100, 16383, 16384, 1 << 40])
def test_pread64(k: ksvc.Ksvc, files: dict[str, Path], offset: int) -> None:
    fds = {s: os.open(files[s], os.O_RDONLY) for s in "dk"}
    bufs = {s: buf(4096) for s in "dk"}
    r = both(k, NR["pread64"], lambda s: (fds[s], bufs[s][1], 4096, offset))
    assert r[0] == r[1]
    assert bytes(ffi.buffer(bufs["d"][0], 4096)) == bytes(ffi.buffer(bufs["k"][0], 4096))
    assert os.lseek(fds["k"], 0, os.SEEK_CUR) == 0
    for fd in fds.values():
        os.close(fd)


def test_pread64_negative_offset_is_einval(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    fd = os.open(files["k"], os.O_RDONLY)
    mem, addr = buf(16)
    assert direct(NR["pread64"], fd, addr, 16, -1) == via(k, NR["pread64"], fd, addr, 16, -1) == -errno.EINVAL
    os.close(fd)


def test_write_and_pwrite64(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    fds = {s: os.open(files[s], os.O_RDWR | os.O_APPEND if False else os.O_RDWR) for s in "dk"}
    data, addr = cstr(b"x" * 100)
    assert both(k, NR["write"], lambda s: (fds[s], addr, 50)) == (50, 50)
    assert both(k, NR["pwrite64"], lambda s: (fds[s], addr, 100, 20000)) == (100, 100)
    assert files["d"].read_bytes() == files["k"].read_bytes()
    assert os.lseek(fds["d"], 0, os.SEEK_CUR) == os.lseek(fds["k"], 0, os.SEEK_CUR) == 50
    for fd in fds.values():
        os.close(fd)


def _iov(chunks: list[int]) -> tuple[Any, int, list[Any]]:
    mems = [native.alloc(n) for n in chunks]
    table = native.alloc(16 * len(chunks))
    view = ffi.buffer(table)
    for i, (m, n) in enumerate(zip(mems, chunks, strict=True)):
        struct.pack_into("<QQ", view, 16 * i, native.address_of(m), n)  # type: ignore[arg-type]
    return table, native.address_of(table), mems


@pytest.mark.parametrize("name", ["readv", "preadv", "writev", "pwritev"])
def test_vectored(k: ksvc.Ksvc, files: dict[str, Path], name: str) -> None:
    fds = {s: os.open(files[s], os.O_RDWR) for s in "dk"}
    iovs = {s: _iov([10, 300, 4000]) for s in "dk"}
    if name.startswith("w") or name.startswith("pw"):
        for s in "dk":
            for m in iovs[s][2]:
                ffi.memmove(m, b"W" * len(ffi.buffer(m)), len(ffi.buffer(m)))
    extra: tuple[int, ...] = (777, 0) if name.startswith("p") else ()
    r = both(k, NR[name], lambda s: (fds[s], iovs[s][1], 3, *extra))
    assert r[0] == r[1] > 0
    for md, mk in zip(iovs["d"][2], iovs["k"][2], strict=True):
        assert bytes(ffi.buffer(md)) == bytes(ffi.buffer(mk))
    assert files["d"].read_bytes() == files["k"].read_bytes()
    assert os.lseek(fds["d"], 0, os.SEEK_CUR) == os.lseek(fds["k"], 0, os.SEEK_CUR)
    for fd in fds.values():
        os.close(fd)


# -- opening, closing, metadata ----------------------------------------------------------


def test_open_openat_openat2_close(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    p, addr = cstr(str(files["k"]))
    run = (lambda *a: direct(*a)), (lambda *a: via(k, *a))
    for call in run:
        fd = call(NR["open"], addr, os.O_RDONLY | os.O_CLOEXEC, 0)
        assert fd >= 0 and os.path.samestat(os.fstat(fd), os.stat(files["k"]))
        assert call(NR["close"], fd) == 0
        fd = call(NR["openat"], AT_FDCWD, addr, os.O_RDONLY, 0)
        assert fd >= 0 and call(NR["close"], fd) == 0
        how, how_addr = cstr(struct.pack("<QQQ", os.O_RDONLY, 0, 0)[:-1])
        fd = call(NR["openat2"], AT_FDCWD, addr, how_addr, 24)
        assert fd >= 0 and call(NR["close"], fd) == 0
        assert call(NR["close"], fd) == -errno.EBADF
    missing, maddr = cstr(str(files["k"]) + ".missing")
    assert direct(NR["openat"], AT_FDCWD, maddr, 0, 0) == via(k, NR["openat"], AT_FDCWD, maddr, 0, 0) == -errno.ENOENT


def test_statx(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    p, addr = cstr(str(files["k"]))
    bufs = {s: buf(256) for s in "dk"}
    assert both(k, NR["statx"], lambda s: (AT_FDCWD, addr, 0, 0x7FF, bufs[s][1])) == (0, 0)
    a, b = bytes(ffi.buffer(bufs["d"][0], 256)), bytes(ffi.buffer(bufs["k"][0], 256))
    # atime may tick between the calls on some filesystems; everything else must match
    assert a[:64] == b[:64] and a[80:] == b[80:]


@pytest.mark.parametrize("name", ["stat", "lstat", "fstat", "newfstatat"])
def test_old_stat_forms_fill_struct_stat(k: ksvc.Ksvc, files: dict[str, Path], tmp_path: Path, name: str) -> None:
    link = tmp_path / "link"
    link.symlink_to(files["k"])
    p, addr = cstr(str(link))
    fd = os.open(files["k"], os.O_RDONLY)
    bufs = {s: buf(144) for s in "dk"}

    def args(s: str) -> tuple[int, ...]:
        if name == "fstat":
            return (fd, bufs[s][1])
        if name == "newfstatat":
            return (AT_FDCWD, addr, bufs[s][1], 0x100)
        return (addr, bufs[s][1])

    assert both(k, NR[name], args) == (0, 0)
    assert bytes(ffi.buffer(bufs["d"][0], 144)) == bytes(ffi.buffer(bufs["k"][0], 144))
    os.close(fd)


def test_stat_bad_buffer_is_efault_not_a_crash(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    p, addr = cstr(str(files["k"]))
    assert direct(NR["stat"], addr, 16) == via(k, NR["stat"], addr, 16) == -errno.EFAULT
    assert direct(NR["stat"], 16, 4096) == via(k, NR["stat"], 16, 4096) == -errno.EFAULT


@pytest.mark.parametrize("name", ["fsync", "fdatasync"])
def test_fsync_family(k: ksvc.Ksvc, files: dict[str, Path], name: str) -> None:
    fd = os.open(files["k"], os.O_RDWR)
    assert direct(NR[name], fd) == via(k, NR[name], fd) == 0
    os.close(fd)
    assert direct(NR[name], fd) == via(k, NR[name], fd) == -errno.EBADF


def test_sync_file_range_fallocate_ftruncate_fadvise(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    fds = {s: os.open(files[s], os.O_RDWR) for s in "dk"}
    assert both(k, NR["sync_file_range"], lambda s: (fds[s], 0, 4096, 2)) == (0, 0)
    assert both(k, NR["fallocate"], lambda s: (fds[s], 0, 0, 100000)) == (0, 0)
    assert os.fstat(fds["d"]).st_size == os.fstat(fds["k"]).st_size == 100000
    assert both(k, NR["ftruncate"], lambda s: (fds[s], 1234)) == (0, 0)
    assert os.fstat(fds["k"]).st_size == 1234
    assert both(k, NR["fadvise64"], lambda s: (fds[s], 0, 4096, os.POSIX_FADV_WILLNEED)) == (0, 0)
    assert both(k, NR["ftruncate"], lambda s: (fds[s], -1)) == (-errno.EINVAL, -errno.EINVAL)
    for fd in fds.values():
        os.close(fd)


def test_madvise(k: ksvc.Ksvc) -> None:
    import mmap

    m = mmap.mmap(-1, 8192)
    addr = native.address_of(ffi.from_buffer(m))
    assert (
        direct(NR["madvise"], addr, 8192, mmap.MADV_WILLNEED)
        == via(k, NR["madvise"], addr, 8192, mmap.MADV_WILLNEED)
        == 0
    )
    assert direct(NR["madvise"], addr + 1, 10, 0) == via(k, NR["madvise"], addr + 1, 10, 0) == -errno.EINVAL


def test_path_operations(k: ksvc.Ksvc, tmp_path: Path) -> None:
    for s in "dk":
        (tmp_path / s).mkdir()
        (tmp_path / s / "f").write_bytes(b"abc")

    def p(s: str, rel: str) -> int:
        mem, addr = cstr(str(tmp_path / s / rel))
        keep.append(mem)
        return addr

    keep: list[Any] = []
    steps: list[tuple[str, Callable[[str], tuple[int, ...]]]] = [
        ("mkdir", lambda s: (p(s, "d1"), 0o750)),
        ("mkdirat", lambda s: (AT_FDCWD, p(s, "d2"), 0o700)),
        ("mkdir", lambda s: (p(s, "d1"), 0o750)),  # EEXIST
        ("rename", lambda s: (p(s, "f"), p(s, "g"))),
        ("renameat", lambda s: (AT_FDCWD, p(s, "g"), AT_FDCWD, p(s, "h"))),
        ("renameat2", lambda s: (AT_FDCWD, p(s, "h"), AT_FDCWD, p(s, "d1/h"), 1)),  # RENAME_NOREPLACE
        ("link", lambda s: (p(s, "d1/h"), p(s, "hard"))),
        ("linkat", lambda s: (AT_FDCWD, p(s, "hard"), AT_FDCWD, p(s, "hard2"), 0)),
        ("symlink", lambda s: (p(s, "hard"), p(s, "sym"))),
        ("symlinkat", lambda s: (p(s, "hard2"), AT_FDCWD, p(s, "sym2"))),
        ("unlink", lambda s: (p(s, "sym"),)),
        ("unlinkat", lambda s: (AT_FDCWD, p(s, "sym2"), 0)),
        ("rmdir", lambda s: (p(s, "d2"),)),
        ("rmdir", lambda s: (p(s, "d1"),)),  # ENOTEMPTY
        ("unlinkat", lambda s: (AT_FDCWD, p(s, "missing"), 0)),  # ENOENT
    ]
    for name, make in steps:
        r = both(k, NR[name], make)
        assert r[0] == r[1], (name, r)
    listing = {s: sorted(os.listdir(tmp_path / s)) for s in "dk"}
    assert listing["d"] == listing["k"]
    assert os.stat(tmp_path / "k" / "d1").st_mode == os.stat(tmp_path / "d" / "d1").st_mode


def test_xattrs(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    name, naddr = cstr("user.ksvc")
    value, vaddr = cstr(b"value-1")
    paths = {s: cstr(str(files[s])) for s in "dk"}
    r = both(k, NR["setxattr"], lambda s: (paths[s][1], naddr, vaddr, 7, 0))
    if r[0] == -errno.EOPNOTSUPP:
        pytest.skip(f"the filesystem of {files['d'].parent} has no user xattrs")
    assert r == (0, 0)
    bufs = {s: buf(64) for s in "dk"}
    assert both(k, NR["getxattr"], lambda s: (paths[s][1], naddr, bufs[s][1], 64)) == (7, 7)
    assert bytes(ffi.buffer(bufs["k"][0], 7)) == b"value-1"
    fds = {s: os.open(files[s], os.O_RDWR) for s in "dk"}
    assert both(k, NR["fsetxattr"], lambda s: (fds[s], naddr, vaddr, 3, 0)) == (0, 0)
    assert both(k, NR["fgetxattr"], lambda s: (fds[s], naddr, bufs[s][1], 64)) == (3, 3)
    assert both(k, NR["fgetxattr"], lambda s: (fds[s], naddr, bufs[s][1], 1)) == (
        -errno.ERANGE,
        -errno.ERANGE,
    )
    for fd in fds.values():
        os.close(fd)


# -- sockets ---------------------------------------------------------------------------------


def _sockaddr_in(port: int) -> tuple[Any, int]:
    raw = struct.pack("<H", socket.AF_INET) + port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + bytes(8)
    mem = ffi.new("char[]", raw)
    return mem, native.address_of(mem)


def test_socket_bind_listen_accept_connect(k: ksvc.Ksvc) -> None:
    for call in (lambda *a: direct(*a), lambda *a: via(k, *a)):
        s = call(NR["socket"], socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0)
        assert s >= 0
        sa, sa_addr = _sockaddr_in(0)
        assert call(NR["bind"], s, sa_addr, 16) == 0
        assert call(NR["bind"], s, sa_addr, 16) == -errno.EINVAL
        assert call(NR["listen"], s, 16) == 0
        port = socket.socket(fileno=os.dup(s)).getsockname()[1]
        c = call(NR["socket"], socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0)
        ca, ca_addr = _sockaddr_in(port)
        assert call(NR["connect"], c, ca_addr, 16) == 0
        peer, peer_addr = buf(128)
        plen = ffi.new("unsigned int *", 128)
        a = call(NR["accept4"], s, peer_addr, native.address_of(plen), socket.SOCK_CLOEXEC)
        assert a >= 0 and plen[0] == 16
        assert bytes(ffi.buffer(peer, 8))[4:8] == socket.inet_aton("127.0.0.1")
        msg, maddr = cstr(b"ping")
        assert call(NR["sendto"], c, maddr, 4, 0, 0, 0) == 4
        rb, raddr = buf(16)
        assert call(NR["recvfrom"], a, raddr, 16, 0, 0, 0) == 4
        assert bytes(ffi.buffer(rb, 4)) == b"ping"
        assert call(NR["shutdown"], c, socket.SHUT_WR) == 0
        assert call(NR["recvfrom"], a, raddr, 16, 0, 0, 0) == 0
        c2 = socket.create_connection(("127.0.0.1", port))
        a2 = call(NR["accept"], s, 0, 0)
        assert a2 >= 0
        for fd in (a, a2, c, s):
            os.close(fd)
        c2.close()


def test_accept_bad_fd_and_not_socket(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    fd = os.open(files["k"], os.O_RDONLY)
    assert direct(NR["accept4"], fd, 0, 0, 0) == via(k, NR["accept4"], fd, 0, 0, 0) == -errno.ENOTSOCK
    assert direct(NR["listen"], 9999, 1) == via(k, NR["listen"], 9999, 1) == -errno.EBADF
    os.close(fd)


def test_sendmsg_recvmsg(k: ksvc.Ksvc) -> None:
    for call in (lambda *a: direct(*a), lambda *a: via(k, *a)):
        a, b = socket.socketpair()
        data, daddr = cstr(b"hello-msg")
        iov = ffi.new("unsigned long[2]", [daddr, 9])
        hdr = ffi.new("unsigned long[7]", [0, 0, native.address_of(iov), 1, 0, 0, 0])
        assert call(NR["sendmsg"], a.fileno(), native.address_of(hdr), 0) == 9
        rb, raddr = buf(32)
        riov = ffi.new("unsigned long[2]", [raddr, 32])
        rhdr = ffi.new("unsigned long[7]", [0, 0, native.address_of(riov), 1, 0, 0, 0])
        assert call(NR["recvmsg"], b.fileno(), native.address_of(rhdr), 0) == 9
        assert bytes(ffi.buffer(rb, 9)) == b"hello-msg"
        a.close()
        b.close()


# -- pipes, splice, epoll, waitid ----------------------------------------------------------------


def test_pipe_pipe2_splice_tee(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    for call in (lambda *a: direct(*a), lambda *a: via(k, *a)):
        fds = ffi.new("int[2]")
        assert call(NR["pipe2"], native.address_of(fds), os.O_CLOEXEC) == 0
        r, w = fds[0], fds[1]
        assert os.get_inheritable(r) is False
        fds2 = ffi.new("int[2]")
        assert call(NR["pipe"], native.address_of(fds2)) == 0
        r2, w2 = fds2[0], fds2[1]
        os.write(w, b"0123456789")
        assert call(NR["tee"], r, w2, 4, 0) == 4
        assert os.read(r2, 10) == b"0123"
        src = os.open(files["k"], os.O_RDONLY)
        assert call(NR["splice"], src, 0, w2, 0, 100, 0) == 100
        assert os.read(r2, 200) == files["k"].read_bytes()[:100]
        off = ffi.new("long long *", 1000)
        assert call(NR["splice"], src, native.address_of(off), w2, 0, 10, 0) == 10
        assert off[0] == 1010
        assert os.read(r2, 20) == files["k"].read_bytes()[1000:1010]
        for fd in (r, w, r2, w2, src):
            os.close(fd)


def test_epoll_ctl(k: ksvc.Ksvc) -> None:
    import select

    for call in (lambda *a: direct(*a), lambda *a: via(k, *a)):
        ep = select.epoll()
        r, w = os.pipe()
        ev = ffi.new("unsigned char[12]")
        struct.pack_into("<IQ", ffi.buffer(ev), 0, select.EPOLLIN, 42)  # type: ignore[arg-type]
        assert call(NR["epoll_ctl"], ep.fileno(), 1, r, native.address_of(ev)) == 0
        assert call(NR["epoll_ctl"], ep.fileno(), 1, r, native.address_of(ev)) == -errno.EEXIST
        os.write(w, b"x")
        assert ep.poll(0) == [(42, select.EPOLLIN)]  # the registered data, as epoll_ctl stored it
        ep.close()
        os.close(r)
        os.close(w)


def test_waitid(k: ksvc.Ksvc) -> None:
    P_PID, WEXITED = 1, 4
    for call in (lambda *a: direct(*a), lambda *a: via(k, *a)):
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        info = native.alloc(128)
        assert call(NR["waitid"], P_PID, pid, native.address_of(info), WEXITED, 0) == 0
        si_signo, _, si_code, _, si_pid, _, si_status = struct.unpack_from("<iiiiiii", ffi.buffer(info))
        assert (si_signo, si_pid, si_status) == (17, pid, 7)  # SIGCHLD, the child, its exit code
    assert (
        direct(NR["waitid"], P_PID, 1, 0, WEXITED, 0) == via(k, NR["waitid"], P_PID, 1, 0, WEXITED, 0) == -errno.ECHILD
    )


# -- Tier 2 ------------------------------------------------------------------------------------------


def test_tier2_descriptor_calls(k: ksvc.Ksvc, files: dict[str, Path]) -> None:
    import fcntl

    fds = {s: os.open(files[s], os.O_RDWR) for s in "dk"}
    flags = both(k, NR["fcntl"], lambda s: (fds[s], fcntl.F_GETFL))
    assert flags[0] == flags[1] >= 0
    assert both(k, NR["lseek"], lambda s: (fds[s], 100, os.SEEK_SET)) == (100, 100)
    assert both(k, NR["lseek"], lambda s: (fds[s], -1, os.SEEK_SET)) == (-errno.EINVAL, -errno.EINVAL)
    d1, d2 = both(k, NR["dup"], lambda s: (fds[s],))
    assert d1 >= 0 and d2 >= 0 and os.path.samestat(os.fstat(d2), os.fstat(fds["k"]))
    assert both(k, NR["dup3"], lambda s: (fds[s], 900 if s == "d" else 901, os.O_CLOEXEC)) == (900, 901)
    assert both(k, NR["dup2"], lambda s: (fds[s], 902 if s == "d" else 903)) == (902, 903)
    assert both(k, NR["flock"], lambda s: (fds[s], fcntl.LOCK_EX)) == (0, 0)
    assert both(k, NR["fchmod"], lambda s: (fds[s], 0o640)) == (0, 0)
    assert os.stat(files["d"]).st_mode == os.stat(files["k"]).st_mode
    assert both(k, NR["fchown"], lambda s: (fds[s], os.getuid(), os.getgid())) == (0, 0)
    assert both(k, NR["ioctl"], lambda s: (fds[s], 0x5401, 0)) == (-errno.ENOTTY, -errno.ENOTTY)  # TCGETS
    for fd in (*fds.values(), d1, d2, 900, 901, 902, 903):
        os.close(fd)


def test_tier2_path_calls(k: ksvc.Ksvc, files: dict[str, Path], tmp_path: Path) -> None:
    paths = {s: cstr(str(files[s])) for s in "dk"}
    assert both(k, NR["access"], lambda s: (paths[s][1], os.R_OK)) == (0, 0)
    assert (
        both(k, NR["faccessat"], lambda s: (AT_FDCWD, paths[s][1], os.X_OK)) == (-errno.EACCES,) * 2 or os.getuid() == 0
    )
    assert both(k, NR["fchmodat"], lambda s: (AT_FDCWD, paths[s][1], 0o600)) == (0, 0)
    assert both(k, NR["fchownat"], lambda s: (AT_FDCWD, paths[s][1], os.getuid(), os.getgid(), 0)) == (0, 0)
    ts = ffi.new("long long[4]", [1, 2, 3, 4])
    assert both(k, NR["utimensat"], lambda s: (AT_FDCWD, paths[s][1], native.address_of(ts), 0)) == (0, 0)
    assert os.stat(files["k"]).st_mtime_ns == os.stat(files["d"]).st_mtime_ns == 3 * 10**9 + 4
    link = tmp_path / "ln"
    link.symlink_to("target-name")
    lp, laddr = cstr(str(link))
    bufs = {s: buf(64) for s in "dk"}
    assert both(k, NR["readlink"], lambda s: (laddr, bufs[s][1], 64)) == (11, 11)
    assert both(k, NR["readlinkat"], lambda s: (AT_FDCWD, laddr, bufs[s][1], 64)) == (11, 11)
    assert bytes(ffi.buffer(bufs["k"][0], 11)) == b"target-name"
    cw = {s: buf(4096) for s in "dk"}
    r = both(k, NR["getcwd"], lambda s: (cw[s][1], 4096))
    assert r[0] == r[1] > 0 and bytes(ffi.buffer(cw["d"][0], r[0])) == bytes(ffi.buffer(cw["k"][0], r[1]))
    rnd = {s: buf(32) for s in "dk"}
    assert both(k, NR["getrandom"], lambda s: (rnd[s][1], 32, 0)) == (32, 32)
    assert bytes(ffi.buffer(rnd["k"][0], 32)) != bytes(32)


def test_tier2_dirents_and_socket_options(k: ksvc.Ksvc, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).touch()
    fds = {s: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY) for s in "dk"}
    bufs = {s: buf(4096) for s in "dk"}
    r = both(k, NR["getdents64"], lambda s: (fds[s], bufs[s][1], 4096))
    assert r[0] == r[1] > 0
    assert bytes(ffi.buffer(bufs["d"][0], r[0])) == bytes(ffi.buffer(bufs["k"][0], r[1]))
    for fd in fds.values():
        os.close(fd)
    socks = {s: socket.socket() for s in "dk"}
    one = ffi.new("int *", 1)
    assert both(k, NR["setsockopt"], lambda s: (socks[s].fileno(), socket.SOL_SOCKET, socket.SO_REUSEADDR,
                                                  native.address_of(one), 4)) == (0, 0)  # fmt: skip
    vals = {s: ffi.new("int *") for s in "dk"}
    lens = {s: ffi.new("unsigned int *", 4) for s in "dk"}
    assert both(
        k,
        NR["getsockopt"],
        lambda s: (
            socks[s].fileno(),
            socket.SOL_SOCKET,
            socket.SO_REUSEADDR,
            native.address_of(vals[s]),
            native.address_of(lens[s]),
        ),
    ) == (0, 0)
    assert vals["d"][0] == vals["k"][0] != 0
    for s in "dk":
        socks[s].bind(("127.0.0.1", 0))
    names = {s: buf(128) for s in "dk"}
    nlens = {s: ffi.new("unsigned int *", 128) for s in "dk"}
    assert both(k, NR["getsockname"], lambda s: (socks[s].fileno(), names[s][1], native.address_of(nlens[s]))) == (0, 0)
    assert nlens["k"][0] == 16 and bytes(ffi.buffer(names["k"][0], 2)) == struct.pack("<H", socket.AF_INET)
    assert both(k, NR["getpeername"], lambda s: (socks[s].fileno(), names[s][1], native.address_of(nlens[s]))) == (
        -errno.ENOTCONN, -errno.ENOTCONN)  # fmt: skip
    for sock in socks.values():
        sock.close()


def test_nonblocking_descriptors_return_eagain_like_the_direct_call(k: ksvc.Ksvc) -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    mem, addr = buf(16)
    assert direct(NR["read"], r, addr, 16) == via(k, NR["read"], r, addr, 16) == -errno.EAGAIN
    a, b = socket.socketpair()
    b.setblocking(False)
    assert direct(NR["recvfrom"], b.fileno(), addr, 16, 0, 0, 0) == -errno.EAGAIN
    assert via(k, NR["recvfrom"], b.fileno(), addr, 16, 0, 0, 0) == -errno.EAGAIN
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.setblocking(False)
    assert direct(NR["accept4"], lst.fileno(), 0, 0, 0) == via(k, NR["accept4"], lst.fileno(), 0, 0, 0) == -errno.EAGAIN
    for call in (lambda *x: direct(*x), lambda *x: via(k, *x)):
        c = socket.socket()
        c.setblocking(False)
        sa, sa_addr = _sockaddr_in(lst.getsockname()[1])
        assert call(NR["connect"], c.fileno(), sa_addr, 16) in (0, -errno.EINPROGRESS)
        c.close()
    os.write(w, b"now")
    assert via(k, NR["read"], r, addr, 16) == 3  # data present: the same call succeeds
    for s_ in (a, b, lst):
        s_.close()
    os.close(r)
    os.close(w)
