"""Servers and connections on KSVC for asyncio: streams (``start_server``) and protocols (``create_server``).

Listening sockets are made with the ``socket`` module (once per server);
every ``accept``, ``recv`` and ``send`` after that is a KSVC entry. With the
``multishot-accept`` feature one accept submission yields every connection. A server
owns its connections: :meth:`Server.close` closes the listening sockets
and every connection it accepted. When the process runs out of
descriptors, accepting pauses with one clear log line and resumes once
descriptors are free again; established connections are not disturbed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import ksvc_host
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.frontend.operations import Op
from ksvc_host.net.transport import KsvcTransport

log = logging.getLogger("ksvc.net")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY = 0.1
ACCEPTS_IN_FLIGHT = 16
"""Accepts each listening socket keeps in flight (without the multishot-accept feature)."""
_NR_ACCEPT4 = SYSCALLS["accept4"]
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


async def shared_instance(**selection: Any) -> Any:
    """The event loop's shared KSVC instance (opened on first use with *selection*)."""
    loop = asyncio.get_running_loop()
    k = _shared.get(loop)
    if k is None or k._closed:
        k = await ksvc_host.open_async(**selection)
        _shared[loop] = k
    return k


class Server(asyncio.AbstractServer):
    """Listening sockets and the connections accepted on them."""

    def __init__(self, k: Any, sockets: list[socket.socket], factory: Callable[[], asyncio.BaseProtocol],
                 owns_instance: bool) -> None:  # fmt: skip
        self._k = k
        self._loop: asyncio.AbstractEventLoop = k.loop
        self._sockets = sockets
        self._factory = factory
        self._owns = owns_instance
        self._transports: set[KsvcTransport] = set()
        self._accepting: list[asyncio.Task[None]] = []
        self._multishots: list[Any] = []
        self._lane_tokens: list[tuple[Any, int]] = []
        self._warned = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepted = 0
        """Connections accepted so far."""
        self._start()

    def _start(self) -> None:
        for sock in self._sockets:
            self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> None:
        if self._closed:
            return
        if self._lane_accepts(sock):
            return
        if self._k.multishot_accept:
            self._multishot(sock)
        else:  # several accepts in flight: a burst of connections is taken in a few loop iterations
            self._accepting += [self._loop.create_task(self._accept_loop(sock)) for _ in range(ACCEPTS_IN_FLIGHT)]

    # One multishot accept on the loop's lane: the kernel accepts every connection of a burst -----

    def _lane_accepts(self, sock: socket.socket) -> bool:
        lane = self._k.loop_lane.lane
        if lane is None:
            return False
        on_conn = lambda fd: self._on_lane_accept(sock, fd)  # noqa: E731 - one per listening socket
        on_end = lambda why: self._lane_accepts_ended(sock, why)  # noqa: E731
        token = lane.accept_loop(on_conn, on_end, sock.fileno(), socket.SOCK_CLOEXEC)
        if token is None:
            return False
        self._lane_tokens.append((lane, token))
        self._k.loop_lane.soon()
        return True

    def _on_lane_accept(self, sock: socket.socket, fd: int) -> None:
        if self._closed:
            socket.close(fd)
            return
        try:
            self._connection(sock, fd, _name(fd, peer=True))
        except Exception:  # noqa: BLE001 - a failing connection must not stop the server
            log.exception("ksvc server: setting up a connection failed; connection closed")

    def _lane_accepts_ended(self, sock: socket.socket, why: int) -> None:
        self._lane_tokens = [(lane, t) for lane, t in self._lane_tokens if lane.inflight]
        if self._closed:
            return
        if -why in _OUT_OF_DESCRIPTORS:
            self._out_of_descriptors(sock, OSError(-why, os.strerror(-why)))
        elif why != -errno.ECANCELED:
            log.warning("ksvc server %s: accept failed: %s", sock.getsockname(), os.strerror(-why))
        self._loop.call_later(_ACCEPT_RETRY, self._accept_on, sock)

    # One accept submission for every connection (multishot-accept feature) ---------------------

    def _multishot(self, sock: socket.socket) -> None:
        if self._closed:
            return
        op = Op(_NR_ACCEPT4, (sock.fileno(), 0, 0, socket.SOCK_CLOEXEC))
        box: list[Any] = []  # the waiter, for the callback to see
        try:
            w = self._k.submit_callback(op, lambda res: self._on_accept(sock, box[0], res), multishot=True)
            box.append(w)
        except BlockingIOError:
            self._loop.call_later(_ACCEPT_RETRY, self._multishot, sock)
            return
        self._multishots.append(w)

    def _on_accept(self, sock: socket.socket, w: Any, res: int) -> None:
        if res >= 0:
            if self._closed:
                socket.close(res)
            else:
                self._connection(sock, res, _name(res, peer=True))
        elif not self._closed and -res in _OUT_OF_DESCRIPTORS:
            self._out_of_descriptors(sock, OSError(-res, os.strerror(-res)))
        elif not self._closed and -res != errno.ECANCELED:
            log.warning("ksvc server %s: accept failed: %s", sock.getsockname(), os.strerror(-res))
        if w.done:  # the kernel ended the series (an error, or cancelled): submit again unless closing
            if w in self._multishots:
                self._multishots.remove(w)
            if not self._closed:
                delay = _ACCEPT_RETRY if res < 0 else 0.0
                self._loop.call_later(delay, self._multishot, sock)

    async def _accept_loop(self, sock: socket.socket) -> None:
        while not self._closed:
            try:
                fd, peer = await self._k.accept(sock.fileno(), socket.SOCK_CLOEXEC)
            except asyncio.CancelledError:
                return
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(sock, exc)
                    await asyncio.sleep(_ACCEPT_RETRY)
                    continue
                log.warning("ksvc server %s: accept failed: %s", sock.getsockname(), exc)
                continue
            self._connection(sock, fd, peer)

    def _out_of_descriptors(self, sock: socket.socket, exc: OSError) -> None:
        if not self._warned:
            log.error("ksvc server %s: cannot accept: %s; %d connections open. Raise the descriptor "
                      "limit (ulimit -n) or close connections; accepting resumes when one is free",
                      sock.getsockname(), exc.strerror, len(self._transports))  # fmt: skip
            self._warned = True

    def _connection(self, sock: socket.socket, fd: int, peer: Any) -> None:
        self._warned = False
        self.accepted += 1
        try:
            protocol = self._factory()
        except Exception:  # noqa: BLE001 - a failing factory must not stop the server
            log.exception("ksvc server: protocol factory failed; connection closed")
            socket.close(fd)
            return
        extra = {"peername": peer, "sockname": sock.getsockname()}
        self._transports.add(KsvcTransport(self._k, fd, protocol, extra=extra, server=self))
        self._idle.clear()

    def _detach(self, transport: KsvcTransport) -> None:
        self._transports.discard(transport)
        if not self._transports:
            self._idle.set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._sockets)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._transports)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """True until closed."""
        return not self._closed

    def close(self) -> None:
        """Stop accepting, close the listening sockets and every connection this server accepted."""
        if self._closed:
            return
        self._closed = True
        for task in self._accepting:
            task.cancel()
        for w in self._multishots:
            self._k.cancel(w)
        for lane, token in self._lane_tokens:
            lane.cancel(token)
        for sock in self._sockets:
            sock.close()
        for tr in list(self._transports):
            tr.close()

    def close_clients(self) -> None:
        """Close every connection (the server keeps listening)."""
        for tr in list(self._transports):
            tr.close()

    async def wait_closed(self) -> None:
        """Wait until every connection is gone; an instance opened for this server is closed too."""
        await asyncio.gather(*self._accepting, return_exceptions=True)
        await self._idle.wait()
        if self._owns and self._closed:
            self._owns = False
            await self._k.aclose()

    async def start_serving(self) -> None:
        """Serving starts on creation; nothing to do."""

    async def serve_forever(self) -> None:
        """Serve until cancelled, then close."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _listen(host: str | None, port: int, backlog: int, reuse_address: bool) -> list[socket.socket]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    where = f"{host or '*'}:{port}"
    sockets: list[socket.socket] = []
    try:
        seen = set()
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
            sock.listen(backlog)
            port = sock.getsockname()[1]  # port 0: every family on the same port
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


def _name(fd: int, *, peer: bool) -> Any:
    """The peer's (or our) address of socket *fd*, or ``None`` when it has none (a peer already gone)."""
    view = socket.socket(fileno=fd)
    try:
        return view.getpeername() if peer else view.getsockname()
    except OSError:
        return None
    finally:
        view.detach()  # the transport owns the descriptor


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None = None, port: int = 0, *,
    backlog: int = 1024, reuse_address: bool = True, ksvc: Any = None, **selection: Any,
) -> Server:
    """A server whose connections drive protocols from *protocol_factory* (like ``loop.create_server``).

    *ksvc* is an ``AsyncKsvc`` to serve through; without it the server opens
    its own instance with *selection* (``preset="server"``, ...) and closes
    it in :meth:`Server.wait_closed`.
    """
    owns = ksvc is None
    k = ksvc if ksvc is not None else await ksvc_host.open_async(**selection)
    try:
        sockets = _listen(host, port, backlog, reuse_address)
    except BaseException:
        if owns:
            await k.aclose()
        raise
    return Server(k, sockets, protocol_factory, owns)


async def start_server(
    client_connected_cb: StreamHandler, host: str | None = None, port: int = 0, *, limit: int = 2**16,
    **kwargs: Any,
) -> Server:
    """A streams server: ``client_connected_cb(reader, writer)`` per connection (like ``asyncio.start_server``)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kwargs)


async def create_connection(
    protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *, ksvc: Any = None,
) -> tuple[KsvcTransport, asyncio.BaseProtocol]:
    """Connect to *host*:*port* through KSVC (like ``loop.create_connection``)."""
    k = ksvc if ksvc is not None else await shared_instance()
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        fd = sock.detach()
        try:
            await k.connect(fd, addr, family)
        except OSError as exc:
            socket.close(fd)
            error = exc
            continue
        except BaseException:
            socket.close(fd)
            raise
        protocol = protocol_factory()
        waiter: asyncio.Future[None] = loop.create_future()
        extra = {"peername": addr, "sockname": _name(fd, peer=False)}
        transport = KsvcTransport(k, fd, protocol, extra=extra, waiter=waiter)
        await waiter
        return transport, protocol
    assert error is not None
    raise OSError(error.errno, f"cannot connect to {host}:{port}: {error.strerror}") from None


async def open_connection(
    host: str, port: int, *, limit: int = 2**16, ksvc: Any = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A streams client: ``(reader, writer)`` connected to *host*:*port* (like ``asyncio.open_connection``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, ksvc=ksvc)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
