"""KsvcTransport's asyncio contract, on the loop's lane and on the shared channel.

The peer is a plain blocking socket on loopback in a thread, so what the
transport delivers is checked against what the kernel carried. Every test
runs twice: with the loop's lane (receive loops in C) and with no lanes
(every receive and send an entry on the shared channel).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import ksvc_host as ksvc

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("transport_path")]


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


class Recorder(asyncio.Protocol):
    """Records what the transport delivers; subclasses add behaviour."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert data.__class__ is bytes and data
        self.calls += 1
        self.data += data

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(Recorder):
    """Writes back whatever arrives."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve(factory: Callable[[], asyncio.Protocol]) -> tuple[Any, int, list[Any]]:
    made: list[Any] = []

    def make() -> asyncio.Protocol:
        p = factory()
        made.append(p)
        return p

    server = await ksvc.create_server(make, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], made


def _peer(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    return s


async def _first(made: list[Any]) -> Any:
    while not made or made[0].transport is None:
        await asyncio.sleep(0.001)
    return made[0]


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_pause_reading_stops_delivery_and_resume_delivers_the_rest_in_order() -> None:
    payload = os.urandom(1 << 20)

    class Pausing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.calls == 1:
                self.transport.pause_reading()

    async def main() -> None:
        server, port, made = await _serve(Pausing)
        async with server:
            peer = _peer(port)
            sender = threading.Thread(target=peer.sendall, args=(payload,))
            sender.start()
            p = await _first(made)
            while p.calls == 0:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.2)  # paused: what still arrives is held for the resume
            assert p.calls == 1
            assert not p.transport.is_reading()
            held = len(p.data)
            assert held < len(payload)
            p.transport.resume_reading()
            assert p.transport.is_reading()
            while len(p.data) < len(payload):
                await asyncio.sleep(0.001)
            await asyncio.get_running_loop().run_in_executor(None, sender.join)
            assert bytes(p.data) == payload
            peer.close()
            assert await p.lost is None

    run(main)


def test_end_of_file_while_paused_comes_after_the_held_data() -> None:
    payload = os.urandom(300_000)

    class PausingOnce(Recorder):
        eof = False

        def data_received(self, data: bytes) -> None:
            assert not self.eof
            super().data_received(data)
            if self.calls == 1:
                self.transport.pause_reading()

        def eof_received(self) -> bool | None:
            self.eof = True
            return None

    async def main() -> None:
        server, port, made = await _serve(PausingOnce)
        async with server:
            peer = _peer(port)
            peer.sendall(payload)
            peer.shutdown(socket.SHUT_WR)  # end of file right behind the data
            p = await _first(made)
            while p.calls == 0:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.2)
            assert p.calls == 1 and not p.eof
            p.transport.resume_reading()
            assert await p.lost is None
            assert p.eof and bytes(p.data) == payload
            peer.close()

    run(main)


def test_tcp_connections_send_without_delay_as_asyncio_does() -> None:
    async def main() -> None:
        server, port, made = await _serve(Recorder)
        async with server:
            peer = _peer(port)
            p = await _first(made)
            fd = p.transport.fileno()
            view = socket.socket(fileno=fd)
            try:
                assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            finally:
                view.detach()
            _, writer = await ksvc.open_connection("127.0.0.1", port)
            view = socket.socket(fileno=writer.transport.fileno())  # type: ignore[attr-defined]
            try:
                assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            finally:
                view.detach()
            writer.close()
            peer.close()

    run(main)


def test_a_burst_of_connections_is_accepted_and_every_one_served() -> None:
    async def main() -> None:
        server, port, made = await _serve(Echo)
        loop = asyncio.get_running_loop()
        async with server:

            def burst(n: int) -> list[bytes]:
                socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]  # all queued at once
                try:
                    for i, c in enumerate(socks):
                        c.settimeout(10)
                        c.sendall(i.to_bytes(4, "little"))
                    return [_recv_exactly(c, 4) for c in socks]
                finally:
                    for c in socks:
                        c.close()

            got = await loop.run_in_executor(None, burst, 300)
            assert got == [i.to_bytes(4, "little") for i in range(300)]
            assert server.accepted == 300

    run(main)


def test_an_exception_in_data_received_is_reported_and_closes_the_connection() -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            raise ValueError("handler bug")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        server, port, made = await _serve(Failing)
        async with server:
            peer = _peer(port)
            peer.sendall(b"boom")
            p = await _first(made)
            exc = await p.lost
            assert isinstance(exc, ValueError) and str(exc) == "handler bug"
            assert p.calls == 1
            assert reported and "data_received" in reported[0]["message"]
            assert reported[0]["exception"] is exc
            assert await loop.run_in_executor(None, peer.recv, 10) == b""  # the transport closed the socket
            peer.close()

    run(main)


def test_nothing_is_delivered_after_close() -> None:
    class Closing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.transport.close()

    async def main() -> None:
        server, port, made = await _serve(Closing)
        async with server:
            peer = _peer(port)
            peer.sendall(b"first")
            p = await _first(made)
            assert await p.lost is None
            try:
                for _ in range(50):
                    peer.sendall(b"more")
            except OSError:
                pass  # the transport closed the socket: a reset is the peer's answer
            await asyncio.sleep(0.05)
            assert p.calls == 1 and bytes(p.data) == b"first"
            peer.close()

    run(main)


def test_set_protocol_moves_delivery_to_the_new_protocol() -> None:
    async def main() -> None:
        server, port, made = await _serve(Recorder)
        async with server:
            peer = _peer(port)
            peer.sendall(b"one")
            p = await _first(made)
            while bytes(p.data) != b"one":
                await asyncio.sleep(0.001)
            q = Recorder()
            q.transport = p.transport
            p.transport.set_protocol(q)
            assert p.transport.get_protocol() is q
            peer.sendall(b"two")
            while bytes(q.data) != b"two":
                await asyncio.sleep(0.001)
            assert bytes(p.data) == b"one"
            peer.close()
            assert await q.lost is None

    run(main)


def test_write_copies_a_mutable_buffer_and_sends_in_order() -> None:
    async def main() -> None:
        server, port, made = await _serve(Recorder)
        loop = asyncio.get_running_loop()
        async with server:
            peer = _peer(port)
            p = await _first(made)
            buf = bytearray(b"A" * 1000)
            p.transport.write(buf)
            buf[:] = b"B" * 1000  # the caller reuses its buffer at once
            p.transport.write(memoryview(buf))
            p.transport.write(b"C" * 200_000)  # more than one send: queued behind the first
            assert p.transport.get_write_buffer_size() > 0
            got = await loop.run_in_executor(None, _recv_exactly, peer, 202_000)
            assert got == b"A" * 1000 + b"B" * 1000 + b"C" * 200_000
            while p.transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
            peer.close()

    run(main)


def test_echoing_leaves_nothing_for_the_cycle_collector() -> None:
    async def main() -> int:
        server, port, made = await _serve(Echo)
        loop = asyncio.get_running_loop()
        async with server:
            peer = _peer(port)

            def talk(n: int) -> None:
                for i in range(n):
                    msg = i.to_bytes(8, "little") * 8
                    peer.sendall(msg)
                    assert _recv_exactly(peer, len(msg)) == msg

            await loop.run_in_executor(None, talk, 50)  # warm up: connection set-up objects
            gc.collect()
            gc.disable()
            try:
                await loop.run_in_executor(None, talk, 2000)
                found = gc.collect()
            finally:
                gc.enable()
            peer.close()
            return found

    found = run(main)
    assert found < 50, f"{found} objects left to the cycle collector by 2000 echoes"


def test_an_idle_connection_is_answered_at_once() -> None:
    # One message in flight on an otherwise idle loop: its completion must wake the loop at once (a ring whose
    # completions wait for the loop's next entry into the kernel held each echo back 4-8 ms).
    async def main() -> float:
        server, port, made = await _serve(Echo)
        loop = asyncio.get_running_loop()
        async with server:
            peer = _peer(port)
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def talk(n: int) -> list[float]:
                times = []
                for i in range(n):
                    msg = i.to_bytes(8, "little") * 8
                    t = time.perf_counter()
                    peer.sendall(msg)
                    assert _recv_exactly(peer, len(msg)) == msg
                    times.append(time.perf_counter() - t)
                return times

            times = sorted(await loop.run_in_executor(None, talk, 200))
            peer.close()
            return times[len(times) // 2]

    median = run(main)
    assert median < 0.002, f"median echo of an idle connection {median * 1e6:.0f} us (expected ~100 us)"


def test_gc_and_fork_mid_flight_leave_the_connections_serving() -> None:
    # gc.collect() inside deliveries (other receives are in the kernel, their buffers held by the lane),
    # and a fork from the loop's thread while connections are live: the child lets the parent's ring be,
    # and the parent goes on echoing every byte.
    class Echo(Recorder):
        def data_received(self, data: bytes) -> None:
            self.calls += 1
            if self.calls % 10 == 0:  # a full collection every tenth delivery (each costs ms in a big process)
                gc.collect()
            self.transport.write(data)

    async def main() -> int:
        server, port, made = await _serve(Echo)
        loop = asyncio.get_running_loop()
        async with server:
            peers = [_peer(port) for _ in range(4)]

            def talk(n: int) -> None:
                for i in range(n):
                    for j, c in enumerate(peers):
                        msg = (i * 4 + j).to_bytes(8, "little") * 4
                        c.sendall(msg)
                        assert _recv_exactly(c, len(msg)) == msg

            await loop.run_in_executor(None, talk, 50)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if gc.collect() >= 0 else 1)  # the child touches nothing of the parent's lanes
            await loop.run_in_executor(None, talk, 50)
            _, status = os.waitpid(pid, 0)
            for c in peers:
                c.close()
            return status

    assert run(main) == 0


def test_ctrl_c_mid_traffic_stops_the_server_cleanly(transport_path: str, lane_impl: str) -> None:
    # `ksvc echo` in a child process; SIGINT while a connection has data in flight and another waits in a
    # receive: the server stops within a bound, says how many connections it served, and exits 0.
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, KSVC_LANES_OFF="1") if transport_path == "channel" else dict(os.environ)
    env["KSVC_LANE_IMPL"] = lane_impl
    code = (
        "import os, sys; from ksvc_host import lanes; from ksvc_basic import lane_reference, own_rings\n"
        "if os.environ.get('KSVC_LANES_OFF'): lanes.plan = lambda instance: None\n"
        "if os.environ['KSVC_LANE_IMPL'] == 'twin': own_rings.lane_module = lambda: lane_reference\n"
        "from ksvc_host.cli import main; sys.exit(main(['echo', '--port', '0']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        busy, idle = _peer(port), _peer(port)
        idle.sendall(b"?")
        assert idle.recv(1) == b"?"  # accepted; its next receive now waits in the kernel
        busy.sendall(b"x" * 100_000)  # data in flight both ways
        assert len(busy.recv(65536)) > 0
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "stopped after 2 connections" in err
        busy.close()
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_connections_leave_the_event_loop_free_for_other_callbacks(transport_path: str, lane_impl: str) -> None:
    # 32 pairs of KSVC connections in one loop, each answering the other at once, for ever: a callback
    # scheduled meanwhile (a new connection's set-up, a timer) must still run soon. A turn that delivered
    # while completions kept coming never returned to the loop; a child process, so that hang is a failure.
    import subprocess
    import sys

    code = (
        "import asyncio, json, os, sys, time\n"
        "from ksvc_host import lanes; from ksvc_basic import lane_reference, own_rings\n"
        "if os.environ['KSVC_PATH'] == 'channel': lanes.plan = lambda instance: None\n"
        "if os.environ['KSVC_LANE_IMPL'] == 'twin': own_rings.lane_module = lambda: lane_reference\n"
        "import ksvc_host as ksvc\n"
        "class Echo(asyncio.Protocol):\n"
        "    moved = 0\n"
        "    def connection_made(self, t): self.t = t\n"
        "    def data_received(self, d): Echo.moved += 1; self.t.write(d)\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    async with ksvc.open_async() as k:\n"
        "        server = await ksvc.create_server(Echo, '127.0.0.1', 0, ksvc=k)\n"
        "        port = server.sockets[0].getsockname()[1]\n"
        "        pairs = [await ksvc.create_connection(Echo, '127.0.0.1', port, ksvc=k) for _ in range(32)]\n"
        "        for t, _ in pairs: t.write(b'x' * 64)\n"
        "        delays = []\n"
        "        for _ in range(20):\n"
        "            ran = loop.create_future(); t0 = time.monotonic()\n"
        "            loop.call_soon(ran.set_result, None)\n"
        "            await ran\n"
        "            delays.append(time.monotonic() - t0)\n"
        "            await asyncio.sleep(0.005)\n"
        "        moved = Echo.moved\n"
        "        for t, _ in pairs: t.close()\n"
        "        server.close()\n"
        "    print(json.dumps({'worst': max(delays), 'moved': moved}))\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, KSVC_PATH=transport_path, KSVC_LANE_IMPL=lane_impl)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the event loop never ran a callback scheduled while 32 connection pairs were echoing")
    assert done.returncode == 0, done.stderr
    import json

    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["moved"] > 1000, got  # the pairs were busy all along
    assert got["worst"] < 1.0, f"a callback waited {got['worst'] * 1e3:.0f} ms behind the connections' traffic"
