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

import ksvc_host as ksvc
from ksvc_host import fastpath
from ksvc_host.abi.syscalls import SYSCALLS


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
