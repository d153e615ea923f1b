"""registered buffers: READ_FIXED is really used, results equal os.*, the pool's contract, memlock errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ksvc_basic.basic_iouring import BasicIoUring
from ksvc_regbuf.registered import RegisteredBuffers

import ksvc_host as ksvc
from ksvc_host import testing


def test_conformance() -> None:
    be = BasicIoUring(8)
    try:
        testing.check_buffer_provider(lambda: RegisteredBuffers(be, count=8, size=4096))
    finally:
        be.shutdown()


STACKS = [
    {"buffer_provider": "registered"},
    {"io_backend": "fixed-buffers"},
    {"io_backend": "sqpoll+fixed-buffers", "buffer_provider": "registered"},
]


@pytest.mark.parametrize("selection", STACKS)
def test_stacks(selection: dict[str, str]) -> None:
    try:
        import ksvc_sqpoll  # noqa: F401
    except ImportError:
        if "sqpoll" in selection.get("io_backend", ""):
            pytest.skip("ksvc-sqpoll is not installed in this environment")
    testing.check_instance(**selection)


def test_reads_use_read_fixed(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 18))
    with ksvc.open(buffer_provider="registered") as k:
        bp = k.instance.buffer_provider
        assert isinstance(bp, RegisteredBuffers)
        fd = k.open(p, os.O_RDWR)
        for i in range(32):
            assert k.pread(fd, 4096, i * 4096) == os.pread(fd, 4096, i * 4096)
        assert bp.fixed_ops >= 32 and bp.in_use == 0  # every read went READ_FIXED and returned its buffer
        assert k.pread(fd, 1 << 17, 0) == os.pread(fd, 1 << 17, 0)  # larger than a buffer: plain READ
        k.close(fd)


def test_memlock_refusal_names_the_limit() -> None:
    code = textwrap.dedent("""
        import resource, ksvc_host as ksvc
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
        try:
            ksvc.open(buffer_provider="registered", options={"buffers": 256, "buffer_size": 1 << 20})
        except OSError as exc:
            print("ERR", exc)
    """)
    if os.geteuid() == 0:
        pytest.skip("root is not bound by RLIMIT_MEMLOCK (CAP_IPC_LOCK); the refusal cannot be provoked")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "RLIMIT_MEMLOCK" in out.stdout, out.stdout + out.stderr
