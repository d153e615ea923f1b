"""The echo servers ``ksvc bench echo`` compares, each run as ``python -m ksvc_host.bench.echo_servers KIND``.

Every handler is ordinary Python of the same style: a Protocol that writes
back what it receives, or the streams coroutine of ``ksvc echo``
(:func:`ksvc_host.net.echo.echo_handler`, plain asyncio code) that reads and
writes with ``drain``. The server prints ``ready PORT`` and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ksvc_host.net.echo import echo_handler  # plain asyncio streams code: the same handler for every server

KINDS = (
    "uvloop protocol", "uvloop streams", "asyncio protocol", "asyncio streams",
    "ksvc protocol (server)", "ksvc streams (server)", "ksvc protocol (default)", "ksvc streams (default)",
)  # fmt: skip
"""The first is the baseline of the table's ratios."""


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    if kind.startswith("ksvc"):
        import ksvc_host as ksvc

        preset = kind[kind.index("(") + 1 : -1]
        if "protocol" in kind:
            server: Any = await ksvc.create_server(EchoProtocol, "127.0.0.1", 0, preset=preset)
        else:
            server = await ksvc.start_server(echo_handler, "127.0.0.1", 0, preset=preset)
    elif kind.endswith("protocol"):
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    server.close()


def main(kind: str) -> None:
    """Run the server *kind* (exit status 3 when its event loop is not installed)."""
    if kind.startswith("uvloop"):
        try:
            import uvloop
        except ImportError:
            print("absent: uvloop is not installed (pip install 'ksvc-host[bench]')", flush=True)
            sys.exit(3)
        uvloop.run(_serve(kind))
        return
    asyncio.run(_serve(kind))


if __name__ == "__main__":
    main(sys.argv[1])
