"""The raw io_uring: struct layouts and opcodes pinned against the C header and the kernel; behaviour."""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from ksvc_basic.basic_iouring import BasicIoUring
from ksvc_basic.uring import IoUring, ffi

from ksvc_host import native
from ksvc_host.abi import io_uring as U
from ksvc_host.abi.io_uring import IoringOp, opcodes_for_kernel
from ksvc_host.traits.io_backend import SqeSpec

HEADER = Path("/usr/include/linux/io_uring.h")


def _compile_and_run(tmp_path: Path, body: str) -> str:
    if shutil.which("gcc") is None or not HEADER.exists():
        pytest.skip("gcc or <linux/io_uring.h> is missing: cannot compare with the C header")
    src = tmp_path / "probe.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/io_uring.h>\nint main(void){\n"
        + body
        + "return 0;}\n"
    )
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_struct_layouts_match_the_c_header(tmp_path: Path) -> None:
    checks = {
        "sqe": ("struct io_uring_sqe", {"opcode": "opcode", "flags": "flags", "ioprio": "ioprio", "fd": "fd",
                                         "off": "off", "addr": "addr", "len": "len", "op_flags": "rw_flags",
                                         "user_data": "user_data", "buf_index": "buf_index",
                                         "personality": "personality", "file_index": "file_index"}),
        "cqe": ("struct io_uring_cqe", {"user_data": "user_data", "res": "res", "flags": "flags"}),
        "params": ("struct io_uring_params", {"sq_entries": "sq_entries", "cq_entries": "cq_entries",
                                               "flags": "flags", "sq_thread_cpu": "sq_thread_cpu",
                                               "sq_thread_idle": "sq_thread_idle", "features": "features",
                                               "wq_fd": "wq_fd", "sq_off": "sq_off", "cq_off": "cq_off"}),
    }  # fmt: skip
    body = ""
    for key, (ctype, fields) in checks.items():
        body += f'printf("{key} size %zu\\n", sizeof({ctype}));\n'
        for ours, theirs in fields.items():
            body += f'printf("{key} {ours} %zu\\n", offsetof({ctype}, {theirs}));\n'
    out = _compile_and_run(tmp_path, body)
    c = {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}
    tables = {
        "sqe": (U.SQE_SIZE, U.SQE_FIELDS),
        "cqe": (U.CQE_SIZE, U.CQE_FIELDS),
        "params": (U.PARAMS_SIZE, U.PARAMS_FIELDS),
    }
    cffi_types = {"sqe": "struct io_uring_sqe", "cqe": "struct io_uring_cqe", "params": "struct io_uring_params"}
    for key, (size, fields) in tables.items():
        assert c[(key, "size")] == size == ffi.sizeof(cffi_types[key]), key
        for name in checks[key][1]:
            assert c[(key, name)] == fields[name].offset == ffi.offsetof(cffi_types[key], name), (key, name)


def test_sqe_bytes_put_every_field_where_the_kernel_reads_it() -> None:
    # Distinct values per field: each must land at its SQE_FIELDS offset (pinned to the C header above),
    # as the cffi struct IoUring.prep writes through would place it; user_data stays zero.
    values = {"opcode": 0x11, "flags": 0x22, "ioprio": 0x3344, "fd": -100, "off": 0x0102030405060708,
              "addr": 0x1112131415161718, "len": 0x21222324, "op_flags": 0x31323334, "buf_index": 0x4142,
              "personality": 0x5152, "file_index": 0x61626364, "addr3": 0x7172737475767778}  # fmt: skip
    spec = SqeSpec(values["opcode"], values["fd"], **{k: v for k, v in values.items() if k not in ("opcode", "fd")})
    raw = spec.to_bytes()
    assert len(raw) == U.SQE_SIZE == ffi.sizeof("struct io_uring_sqe")
    sqe = ffi.new("struct io_uring_sqe *")
    for name, v in values.items():
        setattr(sqe, name, v)
    assert raw == bytes(ffi.buffer(sqe))
    for name, v in values.items():
        field = U.SQE_FIELDS[name]
        assert raw[field.offset : field.offset + field.size] == v.to_bytes(field.size, "little", signed=v < 0), name
    assert raw[32:40] == bytes(8)
    back = SqeSpec.from_bytes(raw)
    assert {k: getattr(back, k) for k in values} == values


def test_constants_match_the_c_header(tmp_path: Path) -> None:
    names = {f"IORING_OP_{op.name}": int(op) for op in IoringOp}
    names.update({f"IORING_SETUP_{f.name}": int(f) for f in U.SetupFlag})
    names.update({f"IORING_ENTER_{f.name}": int(f) for f in U.EnterFlag})
    names.update({f"IORING_{r.name}": int(r) for r in U.Register})
    names.update({"IORING_OFF_SQ_RING": U.OFF_SQ_RING, "IORING_OFF_CQ_RING": U.OFF_CQ_RING,
                  "IORING_OFF_SQES": U.OFF_SQES,
                  "IORING_FSYNC_DATASYNC": U.IORING_FSYNC_DATASYNC, "IORING_CQE_F_MORE": int(U.CqeFlag.MORE),
                  "IOSQE_IO_LINK": int(U.SqeFlag.IO_LINK), "IOSQE_IO_DRAIN": int(U.SqeFlag.IO_DRAIN),
                  "IORING_SQ_NEED_WAKEUP": int(U.SqRingFlag.NEED_WAKEUP),
                  "IORING_ASYNC_CANCEL_ANY": U.IORING_ASYNC_CANCEL_ANY})  # fmt: skip
    # Older headers use enums for opcodes, so test each name with a compile-time-free trick: print only
    # what the header declares, by compiling one probe per name (enum members are not #ifdef-able).
    body = ""
    for name in names:
        body += f'#if defined({name})\nprintf("{name} %llu\\n", (unsigned long long)({name}));\n#endif\n'
    out = _compile_and_run(tmp_path, body)
    seen = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}
    enum_body = "".join(
        f'printf("{n} %llu\\n", (unsigned long long)({n}));\n'
        for n in names
        if n.startswith("IORING_OP_") and int(names[n]) <= 48
    )
    seen.update({line.split()[0]: int(line.split()[1]) for line in _compile_and_run(tmp_path, enum_body).splitlines()})
    assert len(seen) >= 60, "too few names compared with the header"
    for name, value in seen.items():
        assert names[name] == value, name


def test_opcodes_against_the_running_kernel() -> None:
    ring = IoUring(4)
    try:
        supported = ring.probe()
        last = ring.probe_last_op()
    finally:
        ring.close()
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert supported <= opcodes_for_kernel(f"{major}.{minor}") | set(range(last + 1))
    if (major, minor) >= (6, 16):
        assert last == len(IoringOp) - 1
        assert supported >= opcodes_for_kernel("6.16") - {IoringOp.RECV_ZC}  # zero-copy rx needs a NIC queue


def test_static_tables() -> None:
    assert IoringOp.BIND not in opcodes_for_kernel("6.8") and IoringOp.PIPE not in opcodes_for_kernel("6.8")
    assert {IoringOp.BIND, IoringOp.LISTEN} <= opcodes_for_kernel("6.11") and IoringOp.PIPE not in opcodes_for_kernel(
        "6.11"
    )
    assert IoringOp.PIPE in opcodes_for_kernel("6.16.2") and len(opcodes_for_kernel("newest")) == 63
    for bad in ("banana", "6", "4.19", ""):
        with pytest.raises(ValueError):
            opcodes_for_kernel(bad)


def _run(ring: IoUring, spec: SqeSpec, user_data: int = 1) -> int:
    assert ring.prep(user_data, spec)
    ring.submit(wait_nr=1)
    (c,) = ring.reap(1)
    assert c.user_data == user_data
    return c.result


def test_nop_openat_read_statx(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(os.urandom(10000))
    ring = IoUring(8)
    try:
        assert _run(ring, SqeSpec(IoringOp.NOP)) == 0
        path = ffi.new("char[]", str(p).encode())
        fd = _run(ring, SqeSpec(IoringOp.OPENAT, -100, addr=int(ffi.cast("uintptr_t", path)), op_flags=os.O_RDONLY))
        assert fd >= 0
        buf = native.alloc(4096)
        assert _run(ring, SqeSpec(IoringOp.READ, fd, addr=native.address_of(buf), len=4096, off=100)) == 4096
        assert bytes(native.ffi.buffer(buf, 4096)) == os.pread(fd, 4096, 100)
        assert _run(ring, SqeSpec(IoringOp.READ, fd, addr=native.address_of(buf), len=1000, off=-1)) == 1000
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1000  # off = -1 reads at, and moves, the file position
        stx = native.alloc(256)
        assert _run(ring, SqeSpec(IoringOp.STATX, -100, addr=int(ffi.cast("uintptr_t", path)), len=0x7FF,
                                  off=native.address_of(stx))) == 0  # fmt: skip
        assert int.from_bytes(bytes(native.ffi.buffer(stx, 256))[40:48], "little") == 10000
        os.close(fd)
    finally:
        ring.close()


def test_socket_bind_listen_pipe_when_supported() -> None:
    ring = IoUring(8)
    try:
        ops = ring.probe()
        if not {IoringOp.BIND, IoringOp.LISTEN, IoringOp.PIPE} <= ops:
            pytest.skip(f"kernel {os.uname().release} lacks BIND/LISTEN/PIPE opcodes")
        s = _run(ring, SqeSpec(IoringOp.SOCKET, socket.AF_INET, off=socket.SOCK_STREAM))
        sa = ffi.new("char[]", b"\x02\x00\x00\x00\x7f\x00\x00\x01" + bytes(8))
        assert _run(ring, SqeSpec(IoringOp.BIND, s, addr=int(ffi.cast("uintptr_t", sa)), off=16)) == 0
        assert _run(ring, SqeSpec(IoringOp.LISTEN, s, len=4)) == 0
        sock = socket.socket(fileno=s)
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        sock.close()
        fds = ffi.new("int[2]")
        assert _run(ring, SqeSpec(IoringOp.PIPE, addr=int(ffi.cast("uintptr_t", fds)))) == 0
        os.write(fds[1], b"pipe!")
        assert os.read(fds[0], 10) == b"pipe!"
        os.close(fds[0])
        os.close(fds[1])
    finally:
        ring.close()


def test_full_sq_is_back_pressure_and_nothing_is_lost() -> None:
    ring = IoUring(4)
    try:
        accepted = [i for i in range(10) if ring.prep(i, SqeSpec(IoringOp.NOP))]
        assert accepted == [0, 1, 2, 3]
        ring.submit()
        got: list[int] = []
        while len(got) < 4:
            ring.submit(wait_nr=1)
            got += [c.user_data for c in ring.reap(8)]
        assert sorted(got) == accepted
        assert ring.prep(99, SqeSpec(IoringOp.NOP))
    finally:
        ring.close()


def test_backend_cancel_eventfd_inflight_shutdown() -> None:
    be = BasicIoUring(8)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    be.set_wakeup_fd(efd)
    r, w = os.pipe()
    buf = native.alloc(8)
    assert be.submit(7, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=-1))
    assert be.submit(8, SqeSpec(IoringOp.NOP))
    be.flush()
    assert be.inflight() == 2
    poller = select.poll()
    poller.register(efd, select.POLLIN)
    assert poller.poll(2000)  # the NOP's CQE signalled the eventfd
    got = {c.user_data: c.result for c in be.poll_completions()}
    assert got == {8: 0}
    assert be.cancel(7)
    be.flush()
    for _ in range(200):
        got.update({c.user_data: c.result for c in be.poll_completions()})
        if 7 in got:
            break
        poller.poll(10)
    assert got[7] == -errno.ECANCELED
    assert be.inflight() == 0
    assert be.submit(9, SqeSpec(IoringOp.READ, r, addr=native.address_of(buf), len=8, off=-1))
    be.flush()
    be.shutdown(timeout=2.0)  # cancels the pending read and reaps it
    assert be.inflight() == 0
    for fd in (r, w, efd):
        os.close(fd)


def test_setup_error_names_the_fix() -> None:
    with pytest.raises(OSError) as info:
        IoUring(1 << 20)  # more entries than io_uring accepts
    assert "io_uring_setup" in str(info.value)
