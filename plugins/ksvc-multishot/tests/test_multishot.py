"""multishot-accept: one submission serves many connections; closing the iterator cancels it."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

import ksvc_host as ksvc


def _listener(k: ksvc.Ksvc) -> tuple[int, int]:
    s = k.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    k.bind(s, ("127.0.0.1", 0))
    k.listen(s, 128)
    return s, k.getsockname(s)[1]


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_one_submission_many_connections(dispatcher: str) -> None:
    with ksvc.open(io_backend="multishot-accept", dispatcher=dispatcher) as k:
        s, port = _listener(k)
        n = 25
        clients: list[socket.socket] = []
        threading.Thread(
            target=lambda: clients.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(n))
        ).start()
        tail_before = k.instance.channel.submit_ring.tail
        accepted = []
        it = k.accept_iter(s)
        for fd in it:
            accepted.append(fd)
            if len(accepted) == n:
                break
        it.close()
        assert k.instance.channel.submit_ring.tail - tail_before == 1  # one entry served every connection
        peers = sorted(k.getpeername(fd)[1] for fd in accepted)
        assert peers == sorted(c.getsockname()[1] for c in clients)
        for fd in accepted:
            os.close(fd)
        for c in clients:
            c.close()
        assert k._completer.pending_count() == 0  # the cancelled series ended
        k.close(s)


def test_without_the_feature_it_is_a_clear_error() -> None:
    with ksvc.open() as k:
        s, _ = _listener(k)
        with pytest.raises(OSError) as info:
            next(k.accept_iter(s))
        assert info.value.errno == errno.EOPNOTSUPP
        assert k.getpid() == os.getpid()
        k.close(s)


def test_server_accepts_every_connection_from_one_submission() -> None:
    import asyncio

    from ksvc_host.net.echo import echo_handler

    async def main() -> None:
        server = await ksvc.start_server(echo_handler, "127.0.0.1", 0, io_backend="multishot-accept")
        port = server.sockets[0].getsockname()[1]
        async with server:
            # One multishot accept: on the loop's lane where it has one, else through the feature's shared ring.
            def submissions() -> int:
                return len(server._multishots) + len(server._lane_tokens)

            assert server._k.multishot_accept and submissions() == 1

            async def client(i: int) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"%d" % i)
                got = await reader.readexactly(len(b"%d" % i))
                writer.close()
                return got

            assert await asyncio.gather(*(client(i) for i in range(50))) == [b"%d" % i for i in range(50)]
            assert server.accepted == 50
            assert submissions() == 1  # still the one submission
            peer = server._transports and next(iter(server._transports)).get_extra_info("peername")
            assert peer is None or peer[0] == "127.0.0.1"

    asyncio.run(asyncio.wait_for(main(), 30))
