"""fixed-files: registered descriptors run as fixed files, results equal os.*, slots are released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host import testing


@pytest.mark.parametrize("backend", ["fixed-files", "sqpoll+fixed-files"])
def test_stack(backend: str) -> None:
    try:
        testing.check_instance(io_backend=backend)
    except ksvc.SelectionError as exc:
        pytest.skip(f"not installed here: {exc}")


def test_registered_descriptor_is_used_as_a_fixed_file(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 16))
    with ksvc.open(io_backend="fixed-files", options={"fixed_file_slots": 4}) as k:
        ff = k.fixed_files
        assert ff is not None
        fd = k.open(p, os.O_RDWR)
        slot = ff.register(fd)
        assert ff.register(fd) == slot and ff.registered() == {fd: slot}
        for i in range(16):
            assert k.pread(fd, 4096, i * 4096) == os.pread(fd, 4096, i * 4096)
        assert k.pwrite(fd, b"fixed", 0) == 5 and os.pread(fd, 5, 0) == b"fixed"
        assert ff.rewritten >= 17
        k.close(fd)  # releases the slot before closing
        assert ff.registered() == {}
        fds = [os.open(p, os.O_RDONLY) for _ in range(5)]
        for f in fds[:4]:
            ff.register(f)
        with pytest.raises(OSError, match="fixed_file_slots"):
            ff.register(fds[4])
        for f in fds:
            ff.unregister(f)
            os.close(f)


def test_server_connections_use_fixed_files() -> None:
    import asyncio

    from ksvc_host.net.echo import echo_handler

    async def main() -> None:
        server = await ksvc.start_server(echo_handler, "127.0.0.1", 0, io_backend="fixed-files",
                                         options={"fixed_file_slots": 8})  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        registry = server._k.instance.io_backend.fixed_files
        async with server:
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]  # more than the slots
            for i, (_, w) in enumerate(conns):
                w.write(b"%03d" % i)
            assert [await r.readexactly(3) for r, _ in conns] == [b"%03d" % i for i in range(10)]
            assert len(registry.registered()) == 8 and registry.rewritten > 0  # the rest use plain descriptors
            for _, w in conns:
                w.close()
            for _ in range(100):
                if not registry.registered():
                    break
                await asyncio.sleep(0.01)
            assert registry.registered() == {}  # slots freed as connections closed

    asyncio.run(asyncio.wait_for(main(), 30))
