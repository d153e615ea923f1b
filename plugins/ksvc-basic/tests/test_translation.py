"""The lanes' translation: translation.py and translation.h say the same thing, and say what the syscall does."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from ksvc_basic import translation as T

from ksvc_host.abi import io_uring as U
from ksvc_host.abi.syscalls import SYSCALLS

HEADER = Path(T.__file__).with_name("translation.h")
U64 = (1 << 64) - 1
SQE = struct.Struct("<BBHiQQIIQ24x")  # opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data

CASES: list[tuple[int, tuple[int, ...], bool]] = [  # kind, the six argument words, taken
    (T.K_STREAM, (3, 0x1000, 4096, 0, 0, 0), True),
    (T.K_STREAM, (3, 0x1000, 1 << 32, 0, 0, 0), False),  # a length the SQE cannot hold
    (T.K_STREAM, (1 << 31, 0x1000, 10, 0, 0, 0), False),  # a descriptor past int32
    (T.K_STREAM, (U64, 0x1000, 10, 0, 0, 0), True),  # fd -1: the kernel's EBADF either way
    (T.K_POSITIONED, (3, 0x2000, 512, 8192, 0, 0), True),
    (T.K_POSITIONED, (3, 0x2000, 512, U64, 0, 0), False),  # offset -1: the syscall says EINVAL
    (T.K_SOCKET, (5, 0x3000, 64, 0x40, 0, 0), True),
    (T.K_SOCKET, (5, 0x3000, 64, 0, 0x4000, 16), False),  # an address: not RECV/SEND
    (T.K_SOCKET, (5, 0x3000, 64, 1 << 32, 0, 0), False),  # flags past 32 bits
    (T.K_CLOSE, (7, 0, 0, 0, 0, 0), True),
    (T.K_FSYNC, (7, 0, 0, 0, 0, 0), True),
    (T.K_FDATASYNC, (7, 0, 0, 0, 0, 0), True),
    (T.K_OPENAT, ((-100) & U64, 0x5000, os.O_RDONLY | os.O_CLOEXEC, 0o644, 0, 0), True),
    (T.K_ACCEPT, (9, 0x6000, 0x6100, socket.SOCK_CLOEXEC, 0, 0), True),
    (T.K_ACCEPT, (9, 0x6000, 0x6100, 1 << 32, 0, 0), False),
    (T.K_ACCEPT_PLAIN, (9, 0x6000, 0x6100, 0, 0, 0), True),
    (T.K_CONNECT, (9, 0x7000, 16, 0, 0, 0), True),
    (T.K_CONNECT, (9, 0x7000, 1 << 32, 0, 0, 0), False),
    (T.K_VECTORED, (3, 0x8000, 4, 0, 0, 0), True),
    (T.K_VECTORED, (3, 0x8000, 1 << 32, 0, 0, 0), False),  # an iovec count the SQE cannot hold
    (T.K_VECTORED_POSITIONED, (3, 0x8000, 2, 4096, 0, 0), True),
    (T.K_VECTORED_POSITIONED, (3, 0x8000, 2, U64, 0, 0), False),  # offset -1: preadv says EINVAL
    (T.K_VECTORED_V2, (3, 0x8000, 2, 4096, 0, 0x10), True),  # RWF_APPEND: the SQE's rw_flags
    (T.K_VECTORED_V2, (3, 0x8000, 2, U64, 0, 0), True),  # offset -1: preadv2 reads at the file position
    (T.K_VECTORED_V2, (3, 0x8000, 2, U64 - 1, 0, 0), False),  # offset -2: EINVAL
    (T.K_VECTORED_V2, (3, 0x8000, 2, 0, 0, 1 << 32), False),  # flags past 32 bits
]
OPCODE = 42
USER_DATA = 0x1234_5678_9ABC


def _python(kind: int, a: tuple[int, ...]) -> str:
    if not T.args_fit(kind, a):
        return "refused"
    fd, off, addr, length, op_flags = T.sqe_fields(kind, a)
    return SQE.pack(OPCODE, 0, 0, fd, off, addr, length, op_flags, USER_DATA).hex()


def _probe(tmp_path: Path, rows: Sequence[tuple[int, tuple[int, ...]]], main: str) -> Path:
    """A probe's source: translation.h, a table ``rows`` of (kind, argument words), then *main*."""
    table = ",\n".join(f"{{{k}, {{{', '.join(f'{v}ULL' for v in a)}}}}}" for k, a in rows)
    src = tmp_path / "probe.c"
    src.write_text('#include <stdio.h>\n#include "translation.h"\n'
                   f"struct row {{ int kind; uint64_t a[6]; }} rows[] = {{\n{table}\n}};\n{main}")  # fmt: skip
    return src


def _compile_and_run(src: Path) -> list[str]:
    """Compile the probe *src* against translation.h and run it: its output lines."""
    exe = src.with_suffix("")
    subprocess.run(["gcc", "-std=gnu11", "-I", str(HEADER.parent), "-o", str(exe), str(src)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")


def test_the_c_header_and_the_python_module_translate_alike(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: cannot compile translation.h")
    src = _probe(tmp_path, [(k, a) for k, a, _ in CASES],
        "int main(void) {\n"
        "    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {\n"
        "        if (!args_fit(rows[i].kind, rows[i].a)) { puts(\"refused\"); continue; }\n"
        "        uint8_t s[SQE_SIZE];\n"
        f"        fill_sqe(s, {OPCODE}, rows[i].kind, rows[i].a, {USER_DATA}ULL);\n"
        "        for (int j = 0; j < SQE_SIZE; j++) printf(\"%02x\", s[j]);\n"
        "        putchar('\\n');\n"
        "    }\n"
        "    printf(\"%d %d\\n\", K_LIMIT, NR_TABLE);\n"
        "    return 0;\n}\n"
    )
    out = _compile_and_run(src)
    assert out[: len(CASES)] == [_python(k, a) for k, a, _ in CASES]
    assert out[len(CASES)] == f"{T.K_LIMIT} {T.NR_TABLE}"


def test_the_arguments_io_uring_would_read_otherwise_are_refused() -> None:
    assert [T.args_fit(k, a) for k, a, _ in CASES] == [taken for _, _, taken in CASES]
    fd, off, addr, length, op_flags = T.sqe_fields(T.K_STREAM, (U64, 0x1000, 10, 0, 0, 0))
    assert (fd, off) == (-1, U64), "a stream call reads at the file position (offset -1)"
    assert T.sqe_fields(T.K_FDATASYNC, (7, 0, 0, 0, 0, 0))[4] == U.IORING_FSYNC_DATASYNC


def test_descriptors_the_syscall_answers_at_once_stay_off_io_uring(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    f = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        assert T.fd_suits(T.K_POSITIONED, f)
        with pytest.raises(OSError) as exc:
            os.pread(r, 1, 0)
        assert not T.fd_suits(T.K_POSITIONED, r), f"os.pread on a pipe says {exc.value}; io_uring would wait"
        assert not T.fd_suits(T.K_VECTORED_POSITIONED, r), "os.preadv on a pipe says ESPIPE"
        assert T.fd_suits(T.K_VECTORED_POSITIONED, f) and T.fd_suits(T.K_VECTORED_V2, f)
        assert not T.fd_suits(T.K_VECTORED_V2, r), "a pipe: left to the host (positioned or not)"
        assert T.fd_suits(T.K_STREAM, r) and T.fd_suits(T.K_SOCKET, a.fileno())
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)
        assert not T.fd_suits(T.K_SOCKET, a.fileno()), "nonblocking: the syscall says EAGAIN at once"
        assert not T.fd_suits(T.K_VECTORED, a.fileno()), "readv on it says EAGAIN at once too"
        assert T.fd_suits(T.K_CLOSE, r) and T.fd_suits(T.K_FSYNC, f)
    finally:
        for fd in (f, r, w):
            os.close(fd)
        a.close()
        b.close()


def test_the_table_names_real_syscalls_and_opcodes() -> None:
    every = frozenset(int(op) for op in U.IoringOp)
    table = T.table(every)
    assert set(table) == {SYSCALLS[name] for name in T.CALLS}
    assert table[SYSCALLS["pread64"]] == (int(U.IoringOp.READ), T.K_POSITIONED)
    assert T.table(frozenset({int(U.IoringOp.READ)})) == {
        SYSCALLS["read"]: (int(U.IoringOp.READ), T.K_STREAM),
        SYSCALLS["pread64"]: (int(U.IoringOp.READ), T.K_POSITIONED),
    }, "opcodes the kernel lacks leave their calls out"
    assert set(T.table(every, frozenset({T.K_SOCKET}))) == {SYSCALLS["recvfrom"], SYSCALLS["sendto"]}


STAT_CASES: list[tuple[int, tuple[int, ...]]] = [  # kind, the argument words (the path and struct stat addresses)
    (T.K_STAT, (0x5000, 0x8000, 0, 0, 0, 0)),
    (T.K_LSTAT, (0x5000, 0x8000, 0, 0, 0, 0)),
    (T.K_FSTAT, (7, 0x8000, 0, 0, 0, 0)),
    (T.K_FSTATAT, ((-100) & U64, 0x5000, 0x8000, 0x100, 0, 0)),
]
STATX_BUF = 0x9000


def test_the_stat_calls_become_the_same_statx_and_struct_stat_in_c_and_python(tmp_path: Path) -> None:
    """The STATX SQE of each stat kind, and the conversion of a filled struct statx into struct stat: the
    header's against the Python statement (which the differential tests pin against os.stat)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: cannot compile translation.h")
    from ksvc_host.abi import linux as lx

    statx = bytes(range(256))  # every field a distinct pattern
    src = _probe(tmp_path, STAT_CASES,
        "int main(void) {\n"
        "    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {\n"
        "        uint8_t s[SQE_SIZE]; uint64_t addr;\n"
        f"        fill_statx_sqe(s, {int(U.IoringOp.STATX)}, rows[i].kind, rows[i].a, {STATX_BUF}ULL,\n"
        f"                       {USER_DATA}ULL);\n"
        "        memcpy(&addr, s + 16, 8);\n"
        "        if (rows[i].kind == K_FSTAT) {\n"
        "            printf(\"[%s]\", (const char *)(uintptr_t)addr); memset(s + 16, 0, 8);\n"
        "        }\n"
        "        for (int j = 0; j < SQE_SIZE; j++) printf(\"%02x\", s[j]);\n"
        "        printf(\" %llu\\n\", (unsigned long long)stat_out_of(rows[i].kind, rows[i].a));\n"
        "    }\n"
        "    uint8_t x[STATX_BUF_SIZE], st[144];\n"
        "    for (int j = 0; j < STATX_BUF_SIZE; j++) x[j] = (uint8_t)j;\n"
        "    int r = statx_to_stat(x, (uint64_t)(uintptr_t)st);\n"
        "    for (int j = 0; j < 144; j++) printf(\"%02x\", st[j]);\n"
        "    printf(\" %d %d\\n\", r, statx_to_stat(x, 16));\n"
        "    return 0;\n}\n"
    )
    out = _compile_and_run(src)
    want = []
    for kind, a in STAT_CASES:
        dirfd, path, flags = T.statx_fields(kind, a)
        prefix = ""
        if kind == T.K_FSTAT:
            prefix, path = "[]", 0  # the empty path: the header's own string
        sqe = SQE.pack(int(U.IoringOp.STATX), 0, 0, dirfd, STATX_BUF, path, lx.STATX_BASIC_STATS, flags, USER_DATA)
        want.append(f"{prefix}{sqe.hex()} {T.stat_out_of(kind, a)}")
    assert out[: len(STAT_CASES)] == want
    assert out[len(STAT_CASES)] == f"{lx.statx_to_stat(statx).hex()} 0 -14", "an unwritable struct stat is EFAULT"
