"""An echo server on KSVC: every accept, recv and send is a KSVC entry.

    python examples/echo_server.py 8888          # then: nc 127.0.0.1 8888
"""

import asyncio
import sys

import ksvc_host as ksvc


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main(port: int) -> None:
    server = await ksvc.start_server(echo, "127.0.0.1", port)  # preset="server" with its plugins installed
    print(f"echo server listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8888))
