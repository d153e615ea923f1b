"""KsvcTransport: an asyncio Transport whose receives and sends are KSVC entries (Tier 1).

Each connection keeps one ``recv`` entry in flight, into a buffer of its
own, and hands what arrives to the protocol; buffered bytes go out as one
``send`` entry at a time. Completions arrive as callbacks on the loop's
thread (``AsyncKsvc.submit_callback``): no task or future per operation. Flow control is asyncio's:
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

from ksvc_host import native
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend.core import Waiter
from ksvc_host.frontend.operations import Op, oserror

_DEFAULT_HIGH = 64 * 1024
_DEFAULT_LOW = 16 * 1024
MAX_RECV = 64 * 1024
"""Bytes asked for per receive entry (into one buffer per connection, reused: one receive is in flight)."""

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT})
_NR_RECVFROM = SYSCALLS["recvfrom"]
_NR_SENDTO = SYSCALLS["sendto"]
_NR_SHUTDOWN = SYSCALLS["shutdown"]
_SEND_FLAGS = socket.MSG_NOSIGNAL  # a reset peer gives EPIPE, not SIGPIPE


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
        self._reading = True
        self._closing = False
        self._closed = False
        self._eof_requested = False
        self._eof_sent = False
        self._rbuf = native.alloc(MAX_RECV)
        self._raddr = native.address_of(self._rbuf)
        self._rview = memoryview(native.ffi.buffer(self._rbuf))
        self._recv_w: Waiter | None = None
        self._send_w: Waiter | None = None
        self._fixed: Any = None
        self._loop.call_soon(self._start, waiter)

    def _start(self, waiter: asyncio.Future[None] | None) -> None:
        registry = getattr(self._k.instance.io_backend, "fixed_files", None)
        if registry is not None:  # the fixed-files feature: SQEs on this socket skip the fd table lookup
            try:
                registry.register(self._fd)
                self._fixed = registry
            except OSError:
                pass  # every slot taken: this connection uses its plain descriptor
        self._protocol.connection_made(self)
        self._recv_next()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reading ----------------------------------------------------------------------------

    def _recv_next(self) -> None:
        if self._closing or self._recv_w is not None or not self._reading:
            return
        op = Op(_NR_RECVFROM, (self._fd, self._raddr, MAX_RECV, 0), keep=self._rbuf)
        self._recv_w = self._k.submit_callback(op, self._on_recv)

    def _on_recv(self, res: int) -> None:
        self._recv_w = None
        if self._closing:
            return
        if res < 0:
            self._fatal(oserror(-res))
            return
        if res == 0:
            if not self._protocol.eof_received():
                self.close()
            return
        self._protocol.data_received(self._rview[:res].tobytes())
        self._recv_next()

    def pause_reading(self) -> None:
        """Stop asking for data (a receive already in flight may still deliver)."""
        self._reading = False

    def resume_reading(self) -> None:
        """Ask for data again."""
        if not self._reading:
            self._reading = True
            self._recv_next()

    def is_reading(self) -> bool:
        """True unless paused or closing."""
        return self._reading and not self._closing

    # Writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; it is sent in order, one send entry at a time."""
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        self._buffer += data
        if self._send_w is None:
            self._send_next()
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _send_next(self) -> None:
        if self._closed:
            return
        if self._buffer:
            chunk = bytes(self._buffer)
            view = native.ffi.from_buffer(chunk)
            op = Op(_NR_SENDTO, (self._fd, native.address_of(view), len(chunk), _SEND_FLAGS), keep=(view, chunk))
            self._send_w = self._k.submit_callback(op, self._on_sent)
        elif self._eof_requested and not self._eof_sent:
            self._eof_sent = True
            self._send_w = self._k.submit_callback(Op(_NR_SHUTDOWN, (self._fd, socket.SHUT_WR)), self._on_sent)
        elif self._closing:
            self._finish(None)

    def _on_sent(self, res: int) -> None:
        self._send_w = None
        if self._closed:
            return
        if res < 0:
            self._fatal(oserror(-res))
            return
        del self._buffer[:res]
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        self._send_next()

    def write_eof(self) -> None:
        """Half-close: send what is buffered, then shut down the sending side."""
        if self._eof_requested or self._closing:
            return
        self._eof_requested = True
        if self._send_w is None:
            self._send_next()

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
        if self._recv_w is not None:
            self._k.cancel(self._recv_w)  # its completion (ECANCELED) is ignored; its buffer stays referenced
        if self._send_w is None:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._closing = True
        self._buffer.clear()
        self._finish(None)

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS and not isinstance(exc, ConnectionResetError):
            exc = ConnectionResetError(exc.errno, os.strerror(exc.errno or 0))
        self._closing = True
        self._buffer.clear()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for w in (self._recv_w, self._send_w):
            if w is not None:
                self._k.cancel(w)
        if self._fixed is not None:
            self._fixed.unregister(self._fd)
        try:
            os.close(self._fd)  # an operation still in flight holds its own reference until it ends
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
