"""KsvcTransport: an asyncio Transport whose receives and sends are KSVC entries (Tier 1).

Each connection keeps one receive in flight and hands what arrives to the
protocol; buffered bytes go out as one send at a time. On the loop
thread's lane (:mod:`ksvc_host.lanes`) a receive is a *receive loop* in C:
each completion calls the protocol's ``data_received`` with new bytes and
queues the next receive, and a send is one C call whose completion calls
the transport back; no task, future or Python frame of KSVC's between the
kernel and the protocol. Without a lane (the pure path, or a backend whose
ring features keep operations on the shared ring) the same transport runs
each receive and send as an entry on the shared channel
(``AsyncKsvc.submit_callback``). Flow control is asyncio's: above the
high-water mark the protocol is paused (``StreamWriter.drain`` waits),
below the low-water mark it resumes; ``pause_reading`` stops the receive
loop after the receive in flight. Because the transport follows the asyncio
contract, asyncio's own ``StreamReader``/``StreamWriter`` work on top of it
unchanged. The descriptor is a blocking socket: io_uring waits for
readiness itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections import deque
from typing import Any

from ksvc_host import native
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend.core import Waiter
from ksvc_host.frontend.operations import Op, oserror

_DEFAULT_HIGH = 64 * 1024
_DEFAULT_LOW = 16 * 1024
MAX_RECV = 64 * 1024
"""Bytes asked for per receive."""

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT})
_NR_RECVFROM = SYSCALLS["recvfrom"]
_NR_SENDTO = SYSCALLS["sendto"]
_NR_SHUTDOWN = SYSCALLS["shutdown"]
_SEND_FLAGS = int(socket.MSG_NOSIGNAL)  # a reset peer gives EPIPE, not SIGPIPE (a plain int: the lane takes no enums)


def _no_delay(fd: int) -> None:
    """TCP_NODELAY on a TCP socket, as asyncio's and uvloop's transports set it: small writes go out at once,
    not held back by Nagle's algorithm until the peer's (possibly delayed) acknowledgement."""
    view = socket.socket(fileno=fd)
    try:
        if view.family in (socket.AF_INET, socket.AF_INET6) and view.type == socket.SOCK_STREAM:
            view.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # a peer already gone: the first receive reports it
    finally:
        view.detach()  # the transport owns the descriptor


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
        self._loop_lane = k.loop_lane
        self._protocol: Any = protocol
        self._server = server
        self._buffer = bytearray()
        self._sending = 0
        """Bytes of the send in flight (0: none)."""
        self._send_data: bytes | None = None
        self._high, self._low = _DEFAULT_HIGH, _DEFAULT_LOW
        self._protocol_paused = False
        self._reading = True
        self._receiving = False
        """A receive loop runs (on the lane, or as channel entries)."""
        self._closing = False
        self._closed = False
        self._eof_requested = False
        self._eof_sent = False
        self._held: deque[bytes] = deque()
        """Data that arrived while reading was paused, for the protocol on resume."""
        self._held_end: int | None = None
        """End of file or -errno that came after held data."""
        self._recv_token: int | None = None
        self._send_token: int | None = None
        self._send_watched = False
        self._recv_w: Waiter | None = None
        self._send_w: Waiter | None = None
        self._rbuf: Any = None
        self._rview: memoryview | None = None
        self._fixed: Any = None
        self._loop.call_soon(self._start, waiter)

    def _start(self, waiter: asyncio.Future[None] | None) -> None:
        _no_delay(self._fd)
        registry = self._k.fixed_files
        if registry is not None:  # the fixed-files feature: SQEs on this socket skip the fd table lookup
            try:
                registry.register(self._fd)
                self._fixed = registry
            except OSError:
                pass  # every slot taken: this connection uses its plain descriptor
        self._protocol.connection_made(self)
        self._start_receiving()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reading ----------------------------------------------------------------------------
    #
    # While reading is paused, what still arrives (the receive in flight, or what a multishot receive
    # took from the socket before its cancellation) is held, in order, and delivered on resume: the
    # protocol sees no data_received between pause_reading and resume_reading, as asyncio promises.

    def _start_receiving(self) -> None:
        if self._closing or self._receiving or not self._reading:
            return
        self._receiving = True
        lane = self._loop_lane.lane
        if lane is not None:
            token = lane.receive(self._protocol.data_received, self._received_end, self._fd, MAX_RECV)
            if token is not None:
                self._recv_token = token
                self._loop_lane.soon()
                return
        self._receive_entry()

    def _receive_entry(self) -> None:
        """One receive on the shared channel (no lane): the loop goes on in :meth:`_on_receive_entry`."""
        if self._rbuf is None:
            self._rbuf = native.alloc(MAX_RECV)
            self._rview = memoryview(native.ffi.buffer(self._rbuf))
        op = Op(_NR_RECVFROM, (self._fd, native.address_of(self._rbuf), MAX_RECV, 0), keep=self._rbuf)
        self._recv_w = self._k.submit_callback(op, self._on_receive_entry)

    def _on_receive_entry(self, res: int) -> None:
        self._recv_w = None
        if res <= 0 or self._closing:
            self._received_end(res if res <= 0 else -errno.ECANCELED)
            return
        assert self._rview is not None
        data = self._rview[:res].tobytes()
        if not self._reading:
            self._held.append(data)
            self._received_end(None)
            return
        try:
            self._protocol.data_received(data)
        except Exception as exc:  # noqa: BLE001 - the protocol's failure ends the connection, as in asyncio
            self._received_end(exc)
            return
        if self._reading and not self._closing:
            self._receive_entry()
        else:
            self._received_end(None)

    def _received_end(self, why: int | BaseException | None) -> None:
        """The receive loop ended: *why* is 0 (end of file), -errno, the protocol's exception, or None (paused)."""
        self._receiving = False
        self._recv_token = None
        if self._closing:
            return
        if why is None:
            self._start_receiving()  # resumed meanwhile, or stays paused
        elif self._held and not isinstance(why, BaseException):
            self._held_end = why  # end of file or an error after held data: after the data, on resume
        elif isinstance(why, BaseException):
            self._loop.call_exception_handler({
                "message": "Fatal error: protocol.data_received() call failed.",
                "exception": why, "transport": self, "protocol": self._protocol,
            })  # fmt: skip
            self._fatal(why)
        elif why == 0:
            if not self._protocol.eof_received():
                self.close()
        else:
            self._fatal(oserror(-why))

    def pause_reading(self) -> None:
        """Stop calling the protocol's ``data_received`` until :meth:`resume_reading`."""
        if not self._reading:
            return
        self._reading = False
        lane = self._loop_lane.lane
        if self._recv_token is not None and lane is not None:
            lane.stop(self._recv_token)
            lane.retarget(self._recv_token, self._held.append)

    def resume_reading(self) -> None:
        """Deliver what arrived while paused, then ask for data again."""
        if self._reading or self._closing:
            return
        self._reading = True
        while self._held:
            if not self._reading or self._closing:
                return  # paused again (or closed) by the protocol while taking held data
            try:
                self._protocol.data_received(self._held.popleft())
            except Exception as exc:  # noqa: BLE001 - as a failure in a receive loop
                self._held.clear()
                self._received_end(exc)
                return
        lane = self._loop_lane.lane
        if self._receiving:  # the stopped loop has not ended yet: what it still gets goes to the protocol
            if self._recv_token is not None and lane is not None:
                lane.retarget(self._recv_token, self._protocol.data_received)
        elif self._held_end is not None:
            why, self._held_end = self._held_end, None
            self._received_end(why)
        else:
            self._start_receiving()

    def is_reading(self) -> bool:
        """True unless paused or closing."""
        return self._reading and not self._closing

    # Writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; it is sent in order, one send at a time."""
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        lane = self._loop_lane.lane
        if lane is not None and not self._buffer and data.__class__ is bytes and len(data) <= self._high:
            # The common case in one frame: the previous send went out whole (or there was none), so this
            # one is sent now, quietly (see _send).
            token = self._send_token
            if token is None or not (self._send_watched or lane.watch(token)):
                token = lane.send(self._on_sent, self._fd, data, _SEND_FLAGS)
                if token is not None:
                    self._send_token, self._send_watched, self._sending, self._send_data = token, False, len(data), data
                    if not self._loop_lane.scheduled:
                        self._loop_lane.soon()
                    return
                self._send_token, self._sending, self._send_data = None, 0, None
            else:
                self._send_watched = True
        if not self._buffer and self._send_idle():
            self._send(data if data.__class__ is bytes else bytes(data))  # the caller may reuse its buffer
        else:
            self._buffer += data
        if not self._protocol_paused and len(self._buffer) + self._sending > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()
            self._send_idle()  # the send in flight is watched now: its end resumes the protocol

    def _send(self, chunk: bytes) -> None:
        self._sending = len(chunk)
        self._send_data = chunk
        lane = self._loop_lane.lane
        if lane is not None:
            token = lane.send(self._on_sent, self._fd, chunk, _SEND_FLAGS)
            if token is not None:  # a quiet send: _on_sent runs only if it is short, fails, or is watched
                self._send_token = token
                # Watched at once when something already waits for its end (a paused protocol, a close).
                waiting = self._protocol_paused or self._closing or self._eof_requested
                self._send_watched = waiting and lane.watch(token)
                self._loop_lane.soon()
                return
        view = native.ffi.from_buffer(chunk)
        op = Op(_NR_SENDTO, (self._fd, native.address_of(view), len(chunk), _SEND_FLAGS), keep=(view, chunk))
        self._send_w = self._k.submit_callback(op, self._on_sent)

    def _send_next(self) -> None:
        if self._closed:
            return
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._send(chunk)
        elif self._eof_requested and not self._eof_sent:
            self._eof_sent = True
            self._send_w = self._k.submit_callback(Op(_NR_SHUTDOWN, (self._fd, socket.SHUT_WR)), self._on_shut)
        elif self._closing:
            self._finish(None)

    def _send_idle(self) -> bool:
        """True when no send is in flight. A quiet lane send still in flight is watched from here on (its end
        is needed: something waits behind it); one that already went out whole is forgotten."""
        token = self._send_token
        if token is not None and not self._send_watched:
            lane = self._loop_lane.lane
            if lane is not None and lane.watch(token):
                self._send_watched = True
            else:
                self._sending, self._send_data, self._send_token = 0, None, None
        return not self._sending and self._send_w is None

    def _on_sent(self, res: int) -> None:
        sent, chunk = self._sending, self._send_data
        self._sending, self._send_data = 0, None
        self._send_token = self._send_w = None
        if self._closed:
            return
        if res < 0:
            self._fatal(oserror(-res))
            return
        if res < sent and chunk is not None:
            self._buffer[0:0] = chunk[res:]  # a short send: the rest goes first
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        self._send_next()

    def _on_shut(self, res: int) -> None:
        self._send_w = None
        if self._closed:
            return
        if res < 0:
            self._fatal(oserror(-res))
            return
        self._send_next()

    def write_eof(self) -> None:
        """Half-close: send what is buffered, then shut down the sending side."""
        if self._eof_requested or self._closing:
            return
        self._eof_requested = True
        if self._send_idle():
            self._send_next()

    def can_write_eof(self) -> bool:
        """Stream sockets can half-close."""
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet sent."""
        self._send_idle()
        return len(self._buffer) + self._sending

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
        self._cancel_receive()
        if self._send_idle():
            self._loop.call_soon(self._finish, None)

    def _cancel_receive(self) -> None:
        """Its end (ECANCELED) is ignored; its buffer stays referenced until the kernel lets go."""
        lane = self._loop_lane.lane
        if self._recv_token is not None and lane is not None:
            lane.cancel(self._recv_token)
        if self._recv_w is not None:
            self._k.cancel(self._recv_w)

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
        self._cancel_receive()
        lane = self._loop_lane.lane
        if self._send_token is not None and lane is not None:
            lane.cancel(self._send_token)
        if self._send_w is not None:
            self._k.cancel(self._send_w)
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
        lane = self._loop_lane.lane
        if self._recv_token is not None and lane is not None and self._reading:
            lane.retarget(self._recv_token, protocol.data_received)  # type: ignore[attr-defined]

    def fileno(self) -> int:
        """The socket descriptor (owned by the transport)."""
        return self._fd
