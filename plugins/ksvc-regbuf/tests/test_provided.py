"""provided-ring: the kernel picks the receive buffer; the caller gets exactly the bytes recv() would give."""

from __future__ import annotations

import errno
import os
import socket

import pytest

import ksvc_host as ksvc
from ksvc_host import testing
from ksvc_host.abi.syscalls import SYSCALLS


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_recv_through_a_provided_buffer(dispatcher: str) -> None:
    with ksvc.open(buffer_provider="provided-ring", dispatcher=dispatcher, options={"provided_buffers": 4}) as k:
        a, b = socket.socketpair()
        ring = k.instance.buffer_provider
        for i in range(20):  # more receives than buffers: each is recycled at completion
            payload = os.urandom(100 + i)
            a.sendall(payload)
            assert k.recv(b.fileno(), 4096) == payload
        buf = bytearray(50)
        a.sendall(b"x" * 80)
        assert k.recv_into(b.fileno(), buf) == 50 and bytes(buf) == b"x" * 50  # capped at the caller's length
        assert k.recv(b.fileno(), 100) == b"x" * 30
        assert ring.selected == 22 and ring.in_use == 0  # type: ignore[attr-defined]
        a.sendall(b"oops")
        with pytest.raises(OSError) as info:
            k.syscall(SYSCALLS["recvfrom"], b.fileno(), 16, 4, 0, 0, 0)  # a bad destination pointer
        assert info.value.errno == errno.EFAULT  # (the 4 bytes were taken from the socket: see the module doc)
        a.close()
        assert k.recv(b.fileno(), 10) == b""  # end of stream: no buffer taken
        b.close()


def test_stack() -> None:
    testing.check_instance(buffer_provider="provided-ring")


def test_bad_count() -> None:
    with pytest.raises(ksvc.KsvcError, match="power of two"):
        ksvc.open(buffer_provider="provided-ring", options={"provided_buffers": 3})
