"""KsvcTransport: an asyncio Transport whose receives and sends are KSVC entries (Tier 1).

Each connection runs two small tasks: a reader that keeps one ``recv``
entry in flight and hands what arrives to the protocol, and a writer that
sends the buffered bytes whenever there are any. Flow control is asyncio's:
above the high-water mark the protocol is paused (``StreamWriter.drain``
waits), below the low-water mark it resumes; ``pause_reading`` stops
submitting receives. Because the transport follows the asyncio contract,
asyncio's own ``StreamReader``/``StreamWriter`` work on top of it unchanged.
The descriptor is a blocking socket: io_uring waits for readiness itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

_DEFAULT_HIGH = 64 * 1024
_DEFAULT_LOW = 16 * 1024
MAX_RECV = 256 * 1024
"""Bytes asked for per receive entry."""

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT})


class KsvcTransport(asyncio.Transport):
    """A connected stream socket served through a KSVC instance (``AsyncKsvc``)."""

    def __init__(
        self, k: Any, fd: int, protocol: asyncio.BaseProtocol, *, extra: dict[str, Any] | None = None,
        server: Any = None, waiter: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(extra)
        self._k = k
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop = k.loop
        self._protocol: Any = protocol
        self._server = server
        self._buffer = bytearray()
        self._high, self._low = _DEFAULT_HIGH, _DEFAULT_LOW
        self._protocol_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._closed = False
        self._eof_requested = False
        self._eof_sent = False
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._loop.call_soon(self._start, waiter)

    def _start(self, waiter: asyncio.Future[None] | None) -> None:
        self._protocol.connection_made(self)
        if not self._closing:
            self._reader = self._loop.create_task(self._read_loop())
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while not self._closing:
                if not self._reading.is_set():
                    await self._reading.wait()
                    continue
                data = await self._k.recv(self._fd, MAX_RECV)
                if self._closing:
                    return
                if not data:
                    if not self._protocol.eof_received():
                        self.close()
                    return
                self._protocol.data_received(data)
        except asyncio.CancelledError:
            return
        except OSError as exc:
            self._fatal(exc)

    def pause_reading(self) -> None:
        """Stop asking for data (one receive already in flight may still deliver)."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Ask for data again."""
        self._reading.set()

    def is_reading(self) -> bool:
        """True unless paused or closing."""
        return self._reading.is_set() and not self._closing

    # Writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; it is sent in order by the writer task."""
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        self._buffer += data
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    async def _write_loop(self) -> None:
        try:
            while self._buffer:
                chunk = bytes(self._buffer)
                n = await self._k.send(self._fd, chunk, socket.MSG_NOSIGNAL)
                del self._buffer[:n]
                if self._protocol_paused and len(self._buffer) <= self._low:
                    self._protocol_paused = False
                    self._protocol.resume_writing()
            if self._eof_requested and not self._eof_sent:
                self._eof_sent = True
                await self._k.shutdown(self._fd, socket.SHUT_WR)
        except asyncio.CancelledError:
            return
        except OSError as exc:
            self._writer = None
            self._fatal(exc)
            return
        self._writer = None
        if self._closing:
            self._finish(None)

    def write_eof(self) -> None:
        """Half-close: send what is buffered, then shut down the sending side."""
        if self._eof_requested or self._closing:
            return
        self._eof_requested = True
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())

    def can_write_eof(self) -> bool:
        """Stream sockets can half-close."""
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet sent."""
        return len(self._buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """High- and low-water marks for pausing the protocol (asyncio's defaults: 64 KiB, 16 KiB)."""
        high = _DEFAULT_HIGH if high is None else high
        low = high // 4 if low is None else low
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)``."""
        return self._low, self._high

    # Closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        """True once close() or abort() was called, or the connection failed."""
        return self._closing

    def close(self) -> None:
        """Stop reading, send what is buffered, then close the socket."""
        if self._closing:
            return
        self._closing = True
        self._reading.set()
        if self._reader is not None:
            self._reader.cancel()  # cancels its receive in the kernel
        if self._writer is None:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._closing = True
        self._buffer.clear()
        self._finish(None)

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
            exc = ConnectionResetError(exc.errno, os.strerror(exc.errno or 0))
        self._closing = True
        self._buffer.clear()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for task in (self._reader, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        try:
            os.close(self._fd)
        except OSError:
            pass
        if self._server is not None:
            self._server._detach(self)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol this transport feeds."""
        return self._protocol  # type: ignore[no-any-return,unused-ignore]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Feed another protocol from now on."""
        self._protocol = protocol

    def fileno(self) -> int:
        """The socket descriptor (owned by the transport)."""
        return self._fd
