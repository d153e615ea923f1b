"""``ksvc echo``: an echo server on KSVC (streams handler), for trying the stack from outside."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from ksvc_host.net.server import start_server


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back everything received, until the peer closes or resets."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int, *, ready: Any = None, **selection: Any) -> int:
    """Serve until SIGINT/SIGTERM; return the number of connections accepted."""
    server = await start_server(echo_handler, host, port, **selection)
    where = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    what = ", ".join(f"{k}={v}" for k, v in selection.items()) or "default stack"
    print(f"ksvc echo: listening on {where} ({what}); Ctrl-C stops", flush=True)
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    print(f"ksvc echo: stopped after {server.accepted} connections", file=sys.stderr)
    return server.accepted
