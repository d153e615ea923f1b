"""A thread that runs a dispatcher turn and then exits must not take others' waiting calls with it.

The kernel ties an io_uring request to the thread whose io_uring_enter
submitted it and cancels it when that thread exits. A caller's turn takes
every entry in the submit ring, other threads' too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host import fastpath
from ksvc_host.abi.syscalls import SYSCALLS

pytestmark = pytest.mark.usefixtures("lane_impl")  # lane.c and its pure-Python twin


def test_a_receive_submitted_in_an_exiting_threads_turn_still_gets_its_data(impl: str) -> None:
    a, b = socket.socketpair()
    buf = bytearray(64)
    addr = int(fastpath.ffi.cast("uintptr_t", fastpath.ffi.from_buffer(buf)))
    try:
        with ksvc.open() as k:  # the default stack: no SQ thread, the dispatcher on a thread of its own
            c = k._completer
            w = c.new_waiter(keep=buf)
            # Written without waking the dispatcher's thread: the next turn, on the thread below, takes it.
            assert c.try_submit([(SYSCALLS["recvfrom"], (a.fileno(), addr, 64, 0, 0, 0), 0)], [w], wake=False) == 1

            def short_lived() -> None:
                assert k.getcwd() == os.getcwd()  # its own call runs a turn here

            t = threading.Thread(target=short_lived)
            t.start()
            t.join()
            time.sleep(0.05)  # the thread is gone; a request it submitted would be cancelled by now
            b.send(b"hello")
            c.wait(w)
            assert (w.result, bytes(buf[:5])) == (5, b"hello")
    finally:
        a.close()
        b.close()


def test_cold_reads_taken_in_an_exiting_threads_turn_still_read(impl: str, tmp_path: Path) -> None:
    # A read that misses the page cache waits for the disk on behalf of the thread that submitted it;
    # when that thread exits first the kernel fails it (EFAULT here). Only its own calls go with it.
    path = tmp_path / "cold"
    data = os.urandom(8 << 20)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
        with ksvc.open() as k:
            c = k._completer
            bufs = [bytearray(1 << 20) for _ in range(8)]
            views = [fastpath.ffi.from_buffer(b) for b in bufs]
            ws = [c.new_waiter(keep=(v, b)) for v, b in zip(views, bufs, strict=True)]
            entries = [(SYSCALLS["pread64"], (fd, int(fastpath.ffi.cast("uintptr_t", v)), 1 << 20, i << 20, 0, 0), 0)
                       for i, v in enumerate(views)]  # fmt: skip
            assert c.try_submit(entries, ws, wake=False) == 8

            def short_lived() -> None:
                assert k.getcwd() == os.getcwd()

            t = threading.Thread(target=short_lived)
            t.start()
            t.join()
            for w in ws:
                c.wait(w)
            assert [w.result for w in ws] == [1 << 20] * 8
            assert b"".join(bufs) == data
    finally:
        os.close(fd)
