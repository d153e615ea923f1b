"""Networking on KSVC: streams and protocols over real loopback sockets.

Peers that are not under test are plain ``socket``/asyncio code, so a bug
on our side cannot hide behind the same bug on the other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host.net import Server
from ksvc_host.net.echo import echo_handler

pytestmark = pytest.mark.usefixtures("transport_path")


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 30) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(*args), timeout)

    return asyncio.run(main())


async def _echo_server(**kw: Any) -> tuple[Server, int]:
    server = await ksvc.start_server(echo_handler, "127.0.0.1", 0, **kw)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_echo_round_trips_through_ksvc(dispatcher: str, transport_path: str) -> None:
    async def main() -> None:
        server, port = await _echo_server(dispatcher=dispatcher)
        lane = server._k.loop_lane.lane
        lanes = transport_path == "lane"
        assert (lane is not None) is lanes
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a plain asyncio client
            for size in (1, 100, 70_000, 300_000):
                payload = os.urandom(size)
                writer.write(payload)
                await writer.drain()
                assert await reader.readexactly(size) == payload
            writer.close()
            await writer.wait_closed()
            disp = server._k.instance.dispatcher
            if lanes:  # accept, receives and sends on the loop's lane: the dispatcher saw none of them
                assert lane.entries > 4
                assert disp.entries_processed == 0
            else:  # accept, recv and send went through the channel
                assert disp.entries_processed > 4

    run(main)


def test_ksvc_client_partial_reads_readexactly_readuntil() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for piece in (b"hel", b"lo\nwor", b"ld\n", b"1234", b"5678"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # separate segments: the client sees partial data
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)  # a plain asyncio server
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await ksvc.open_connection("127.0.0.1", port)
            assert await reader.readuntil(b"\n") == b"hello\n"
            assert await reader.readuntil(b"\n") == b"world\n"
            assert await reader.readexactly(6) == b"123456"
            assert await reader.read() == b"78"
            with pytest.raises(asyncio.IncompleteReadError):
                await reader.readexactly(1)
            writer.close()
            await writer.wait_closed()

    run(main)


def test_drain_waits_while_the_peer_does_not_read() -> None:
    async def main() -> None:
        got_writer: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got_writer.set_result(writer)
            await reader.read()  # keeps the connection open

        server = await ksvc.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            peer = socket.create_connection(("127.0.0.1", port))
            writer = await got_writer
            chunk = b"x" * 65536
            blocked = False
            for _ in range(400):  # fill the socket buffers, then drain must wait
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 0.2)
                except TimeoutError:
                    blocked = True
                    break
            assert blocked, "drain never waited although the peer reads nothing"
            assert writer.transport.get_write_buffer_size() > 0
            # the peer reads: drain completes
            loop = asyncio.get_running_loop()
            reading = loop.run_in_executor(None, lambda: _read_all(peer))
            await asyncio.wait_for(writer.drain(), 10)
            writer.close()
            total = await reading
            assert total > 65536 and total % 65536 == 0
            peer.close()

    run(main)


def _push(sock: socket.socket, n: int) -> None:
    try:
        sock.sendall(b"s" * n)
    except OSError:
        pass  # shut down by the test


def _read_all(sock: socket.socket) -> int:
    n = 0
    while data := sock.recv(1 << 20):
        n += len(data)
    return n


def test_half_close_then_reply() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()  # until the client's EOF
            writer.write(b"got " + str(len(data)).encode())
            await writer.drain()
            writer.close()

        server = await ksvc.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await ksvc.open_connection("127.0.0.1", port)
            writer.write(b"a" * 5000)
            writer.write_eof()
            assert await reader.read() == b"got 5000"
            writer.close()
            await writer.wait_closed()

    run(main)


def test_peer_reset_is_reported() -> None:
    async def main() -> None:
        outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                data = await reader.read(100)
                data += await reader.read(100)
                outcome.set_result(data)
            except ConnectionError as exc:
                outcome.set_result(exc)

        server = await ksvc.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            peer = socket.create_connection(("127.0.0.1", port))
            peer.sendall(b"hi")
            await asyncio.sleep(0.05)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # RST
            got = await asyncio.wait_for(outcome, 5)
            assert isinstance(got, ConnectionResetError) or got == b"hi", got

    run(main)


def test_many_connections_and_a_slow_client_does_not_stall_others() -> None:
    async def main() -> None:
        server, port = await _echo_server()
        async with server:
            slow = socket.create_connection(("127.0.0.1", port))
            # Sends far more than the socket buffers hold and never reads its echo back: the server's
            # writes to it stall (and so would a blocking sendall here, hence the thread).
            threading.Thread(target=_push, args=(slow, 32 << 20), daemon=True).start()
            await asyncio.sleep(0.5)

            async def client(i: int) -> bool:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                msg = f"hello {i}".encode() * 10
                ok = True
                for _ in range(3):
                    writer.write(msg)
                    await writer.drain()
                    ok &= await reader.readexactly(len(msg)) == msg
                writer.close()
                await writer.wait_closed()
                return ok

            start = time.monotonic()
            results = await asyncio.gather(*(client(i) for i in range(500)))
            assert all(results)
            assert time.monotonic() - start < 20
            assert server.accepted >= 501
            slow.shutdown(socket.SHUT_RDWR)
            slow.close()

    run(main, timeout=60)


def test_closing_the_server_closes_its_connections() -> None:
    async def main() -> None:
        server, port = await _echo_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert server.connections == 1
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed its side
        assert server.connections == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    run(main)


def test_connect_errors_name_the_address() -> None:
    async def main() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
            await ksvc.open_connection("127.0.0.1", port)

    run(main)


def test_protocol_style_server() -> None:
    class Upper(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data.upper())  # type: ignore[attr-defined]

    async def main() -> None:
        server = await ksvc.create_server(Upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"abc")
            assert await reader.readexactly(3) == b"ABC"
            writer.close()

    run(main)


_LOW_LIMIT_SERVER = """
import asyncio, logging, os, resource, sys
import ksvc_host as ksvc
from ksvc_host.net.echo import echo_handler
logging.basicConfig(level=logging.ERROR, format="%(message)s")
async def main():
    server = await ksvc.start_server(echo_handler, "127.0.0.1", 0)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print("accepted", server.accepted, "open", server.connections, flush=True)
    server.close()
    await server.wait_closed()
asyncio.run(main())
"""


def test_out_of_descriptors_is_a_clear_error_and_serving_goes_on() -> None:
    # The server runs in a child process with room for 4 more descriptors; 10 clients connect.
    proc = subprocess.Popen([sys.executable, "-c", _LOW_LIMIT_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        port = int(proc.stdout.readline().split()[1])

        def report() -> int:
            proc.stdin.write("report\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return int(proc.stdout.readline().split()[1])  # type: ignore[union-attr]

        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]  # the backlog holds them
        time.sleep(0.5)
        first = report()
        assert 0 < first < 10
        for c in clients[:first]:
            c.close()  # frees the server's descriptors for those connections
        deadline = time.monotonic() + 10
        while report() <= first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert report() > first  # accepting resumed by itself
        for c in clients:
            c.close()
    finally:
        proc.stdin.close()
        proc.wait(30)
    err = proc.stderr.read()
    assert "cannot accept: Too many open files" in err and "Raise the descriptor limit (ulimit -n)" in err


def test_thousands_of_concurrent_connections() -> None:
    import resource

    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n + 200  # both ends live in this process
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    async def main() -> None:
        server, port = await _echo_server()
        async with server:
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
            for _ in range(50):
                if server.connections == n:
                    break
                await asyncio.sleep(0.1)
            assert server.connections == n  # all open at once
            for i, (_, w) in enumerate(conns):
                w.write(b"%06d" % i)
            got = await asyncio.gather(*(r.readexactly(6) for r, _ in conns))
            assert got == [b"%06d" % i for i in range(n)]
            for _, w in conns:
                w.close()

    try:
        run(main, timeout=120)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
