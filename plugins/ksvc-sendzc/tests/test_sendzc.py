"""send-zc: sends go out as SEND_ZC, one completion per send with the byte count, bytes intact."""

from __future__ import annotations

import os
import socket

import pytest

import ksvc_host as ksvc
from ksvc_host import testing


def test_stack() -> None:
    testing.check_instance(io_backend="send-zc")


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_zero_copy_send_over_loopback(dispatcher: str) -> None:
    with ksvc.open(io_backend="send-zc", dispatcher=dispatcher) as k:
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
