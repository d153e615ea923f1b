"""``struct sockaddr`` to and from Python address forms (as the socket module uses them)."""

from __future__ import annotations

import socket
import struct
from typing import Any

_IN = struct.Struct("<H2s4s8x")  # family, port (network order), address
_IN6 = struct.Struct("<H2s4s16sI")  # family, port, flowinfo (network order), address, scope id
SOCKADDR_STORAGE = 128


def encode(family: int, address: Any) -> bytes:
    """The ``struct sockaddr`` bytes for *address* in *family* (AF_INET, AF_INET6, AF_UNIX)."""
    if family == socket.AF_INET:
        host, port = address
        packed = socket.inet_pton(socket.AF_INET, _numeric(host, family))
        return _IN.pack(family, port.to_bytes(2, "big"), packed)
    if family == socket.AF_INET6:
        host, port, *rest = address
        flowinfo = rest[0] if rest else 0
        scope = rest[1] if len(rest) > 1 else 0
        packed = socket.inet_pton(socket.AF_INET6, _numeric(host, family))
        return _IN6.pack(family, port.to_bytes(2, "big"), flowinfo.to_bytes(4, "big"), packed, scope)
    if family == socket.AF_UNIX:
        path = address.encode() if isinstance(address, str) else bytes(address)
        if len(path) >= 108:
            raise ValueError(f"AF_UNIX path too long ({len(path)} bytes, at most 107)")
        tail = b"" if path.startswith(b"\0") else b"\0"  # abstract names have no terminator
        return struct.pack("<H", family) + path + tail
    raise ValueError(f"address family {family} is not supported; use AF_INET, AF_INET6 or AF_UNIX")


def decode(data: bytes) -> Any:
    """The Python address form of a ``struct sockaddr`` (as ``socket.accept`` returns it)."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET:
        _, port, addr = _IN.unpack_from(data.ljust(_IN.size, b"\0"))
        return (socket.inet_ntop(socket.AF_INET, addr), int.from_bytes(port, "big"))
    if family == socket.AF_INET6:
        _, port, flow, addr, scope = _IN6.unpack_from(data.ljust(_IN6.size, b"\0"))
        return (
            socket.inet_ntop(socket.AF_INET6, addr),
            int.from_bytes(port, "big"),
            int.from_bytes(flow, "big"),
            scope,
        )
    if family == socket.AF_UNIX:
        path = data[2:]
        return path if path.startswith(b"\0") else path.split(b"\0", 1)[0].decode(errors="surrogateescape")
    return data


def _numeric(host: str, family: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "0.0.0.0" if family == socket.AF_INET else "::"
    try:
        socket.inet_pton(family, host)
        return host
    except OSError:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        return str(infos[0][4][0])
