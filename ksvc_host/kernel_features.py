"""What the running kernel offers the optional io_uring features, tried for real.

Each check makes the smallest real request (a ring with SQPOLL, one
registered buffer, one provided-buffer ring) and reports success or the
errno the kernel gave; opcode-based features read the probe. Used by
``ksvc probe``.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import NamedTuple

from ksvc_host import native
from ksvc_host.abi import io_uring as U


class FeatureSupport(NamedTuple):
    """One feature: whether the kernel supports it, why not, and which plugin provides it."""

    feature: str
    supported: bool
    detail: str
    distribution: str


def _setup(flags: int = 0, idle_ms: int = 0) -> int:
    params = native.alloc(U.PARAMS_SIZE)
    struct.pack_into("<I", native.ffi.buffer(params), U.PARAMS_FIELDS["flags"].offset, flags)
    struct.pack_into("<I", native.ffi.buffer(params), U.PARAMS_FIELDS["sq_thread_idle"].offset, idle_ms)
    return native.syscall(U.NR_IO_URING_SETUP, 4, native.address_of(params))


def _why(ret: int) -> str:
    return f"refused: {os.strerror(-ret)}"


def _register(fd: int, opcode: int, arg: int, nr: int) -> int:
    return native.syscall(U.NR_IO_URING_REGISTER, fd, opcode, arg, nr, 0, 0)


def probe_features(opcodes: frozenset[int]) -> list[FeatureSupport]:
    """Try each optional feature on this kernel."""
    out = []
    fd = _setup(U.SetupFlag.SQPOLL, 10)
    out.append(FeatureSupport("sqpoll", fd >= 0, "kernel SQ poller thread" if fd >= 0 else _why(fd), "ksvc-sqpoll"))
    if fd >= 0:
        os.close(fd)
    fd = _setup()
    if fd < 0:
        return out + [FeatureSupport(n, False, _why(fd), d) for n, d in (("fixed-buffers", "ksvc-regbuf"),)]
    try:
        page = mmap.mmap(-1, 4096)
        addr = native.address_of(native.ffi.from_buffer(page))
        iov = native.ffi.new("unsigned long[2]", [addr, 4096])
        ret = _register(fd, U.Register.REGISTER_BUFFERS, native.address_of(iov), 1)
        detail = "IORING_REGISTER_BUFFERS accepted" if ret >= 0 else _why(ret) + " (RLIMIT_MEMLOCK?)"
        out.append(FeatureSupport("fixed-buffers", ret >= 0, detail, "ksvc-regbuf"))
        ret = _register(fd, U.Register.REGISTER_FILES, native.address_of(native.ffi.new("int[1]", [-1])), 1)
        out.append(FeatureSupport("fixed-files", ret >= 0, "sparse file table" if ret >= 0 else _why(ret),
                                  "ksvc-fixedfiles"))  # fmt: skip
        ring = mmap.mmap(-1, 4096)
        reg = native.ffi.new("unsigned long long[5]", [native.address_of(native.ffi.from_buffer(ring)), 0, 0, 0, 0])
        struct.pack_into("<IHH", native.ffi.buffer(reg), 8, 1, 7, 0)  # ring_entries=1, bgid=7, flags=0
        ret = _register(fd, U.Register.REGISTER_PBUF_RING, native.address_of(reg), 1)
        out.append(FeatureSupport("provided-ring", ret >= 0, "IORING_REGISTER_PBUF_RING accepted" if ret >= 0
                                  else _why(ret), "ksvc-regbuf"))  # fmt: skip
    finally:
        os.close(fd)
    zc = U.IoringOp.SEND_ZC in opcodes
    out.append(FeatureSupport("send-zc", zc, "IORING_OP_SEND_ZC" if zc else "no SEND_ZC opcode", "ksvc-sendzc"))
    ms = U.IoringOp.SOCKET in opcodes  # multishot accept shipped with the SOCKET opcode (5.19)
    out.append(FeatureSupport("multishot-accept", ms, "IORING_ACCEPT_MULTISHOT" if ms else "kernel older than 5.19",
                              "ksvc-multishot"))  # fmt: skip
    return out
