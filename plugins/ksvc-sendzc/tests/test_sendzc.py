"""send-zc: sends go out as SEND_ZC, one completion per send with the byte count, bytes intact."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host import testing


def test_stack() -> None:
    testing.check_instance(io_backend="send-zc")


@pytest.mark.parametrize("backend", ["send-zc", "basic+send-zc"])
@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_zero_copy_send_over_loopback(backend: str, dispatcher: str) -> None:
    with ksvc.open(io_backend=backend, dispatcher=dispatcher) as k:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        c = k.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        k.connect(c, srv.getsockname())
        peer, _ = srv.accept()
        payload = os.urandom(256 * 1024)
        sent = 0
        chunks = [payload[i : i + 16384] for i in range(0, len(payload), 16384)]
        got = bytearray()
        for chunk in chunks:
            sent += k.send(c, chunk)
            while len(got) < sent:
                got += peer.recv(1 << 20)
        assert sent == len(payload) and bytes(got) == payload
        feature = next(f for f in k.instance.io_backend.features if f.name == "send-zc")  # type: ignore[attr-defined]
        assert feature.zc_sends == len(chunks) and not feature._pending
        assert feature.fallbacks == 0 and feature.plain_sends == 0  # TCP: every send zero copy, none retried
        assert k._completer.pending_count() == 0
        k.close(c)
        peer.close()
        srv.close()


def test_server_sends_use_zero_copy() -> None:
    import asyncio
    import os

    from ksvc_host.net.echo import echo_handler

    async def main() -> None:
        server = await ksvc.start_server(echo_handler, "127.0.0.1", 0, io_backend="send-zc")
        port = server.sockets[0].getsockname()[1]
        feature = next(f for f in server._k.instance.io_backend.features if f.name == "send-zc")
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = os.urandom(200_000)
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
            writer.close()
        assert feature.zc_sends > 0  # the echo went out as SEND_ZC

    asyncio.run(asyncio.wait_for(main(), 30))


def _feature(k: ksvc.Ksvc) -> Any:
    return next(f for f in k.instance.io_backend.features if f.name == "send-zc")  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["send-zc", "basic+send-zc"])
@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_unix_socketpair_sends_as_send_would(backend: str, dispatcher: str) -> None:
    """Zero copy does not apply to AF_UNIX: the sends stay plain and return what send(2) returns."""
    with ksvc.open(io_backend=backend, dispatcher=dispatcher) as k:
        feature = _feature(k)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
            a, b = socket.socketpair(socket.AF_UNIX, kind)
            ref_a, ref_b = socket.socketpair(socket.AF_UNIX, kind)
            with a, b, ref_a, ref_b:
                for size in (1, 100, 4096, 60_000):
                    payload = os.urandom(size)
                    assert k.send(a.fileno(), payload) == ref_a.send(payload) == size
                    assert b.recv(size + 1) == ref_b.recv(size + 1) == payload
        assert feature.zc_sends == 0 and feature.fallbacks == 0 and feature.plain_sends == 12
        assert not feature._pending and not feature._plain_sqe and k._completer.pending_count() == 0


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_failed_zero_copy_send_is_retried_as_plain_send(dispatcher: str) -> None:
    """A SEND_ZC the kernel refuses with EOPNOTSUPP goes out again as SEND (here: a stale eligibility)."""
    with ksvc.open(io_backend="send-zc", dispatcher=dispatcher) as k:
        feature = _feature(k)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            feature._eligible[a.fileno()] = True  # as if a TCP socket had this number before
            assert k.send(a.fileno(), b"first") == 5 and b.recv(16) == b"first"
            assert feature.fallbacks == 1 and feature.zc_sends == 0
            assert feature._eligible[a.fileno()] is False  # remembered: the next send is plain at once
            assert k.send(a.fileno(), b"second") == 6 and b.recv(16) == b"second"
            assert feature.fallbacks == 1 and feature.plain_sends == 1
        assert not feature._pending and not feature._plain_sqe and not feature._resend


def test_send_on_a_pipe_fails_as_send_would() -> None:
    r, w = os.pipe()
    try:
        with ksvc.open(io_backend="send-zc") as k:
            with pytest.raises(OSError) as info:
                k.send(w, b"x")
            assert info.value.errno == errno.ENOTSOCK
            with pytest.raises(OSError) as ref:
                socket.socket(fileno=w).send(b"x")
            assert ref.value.errno == errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)


def test_close_forgets_a_descriptor_then_tcp_on_the_same_number_uses_zero_copy() -> None:
    with ksvc.open(io_backend="send-zc") as k:
        feature = _feature(k)
        a, b = socket.socketpair()
        fd = a.detach()
        assert k.send(fd, b"unix") == 4 and b.recv(8) == b"unix"
        k.close(fd)  # through KSVC: the feature forgets the number
        b.close()
        assert fd not in feature._eligible
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        c = k.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        k.connect(c, srv.getsockname())
        peer, _ = srv.accept()
        with srv, peer:
            assert k.send(c, b"tcp!" * 1000) == 4000
            got = b""
            while len(got) < 4000:
                got += peer.recv(8192)
            assert got == b"tcp!" * 1000
            assert feature.zc_sends == 1 and feature.fallbacks == 0
            k.close(c)


def test_fixed_file_slot_of_a_unix_socket_is_sent_plain() -> None:
    try:
        k = ksvc.open(io_backend="fixed-files+send-zc")
    except ksvc.SelectionError as exc:
        pytest.skip(f"not installed here: {exc}")
    with k:
        feature = _feature(k)
        a, b = socket.socketpair()
        with a, b:
            assert k.fixed_files is not None
            k.fixed_files.register(a.fileno())
            payload = os.urandom(10_000)
            assert k.send(a.fileno(), payload) == len(payload)
            got = b""
            while len(got) < len(payload):
                got += b.recv(65536)
            assert got == payload and k.fixed_files.rewritten >= 1
            assert feature.zc_sends == 0 and feature.plain_sends == 1 and feature.fallbacks == 0
            k.fixed_files.unregister(a.fileno())
