"""Ctrl-C that lands during a dispatcher turn run by the caller: delivered after the turn, never inside it.

Python runs signal handlers on the main thread, between any two bytecodes.
A turn of the dispatcher moves entries between rings, io_uring and its own
tables; interrupted half-way it would lose or repeat work. The threaded
dispatcher's turns run on its own thread, where no handler ever runs. The
inline dispatcher's turns run on the caller's thread, so when that is the
main thread they run inside :func:`deferred`: a SIGINT arriving meanwhile is
remembered and raised as ``KeyboardInterrupt`` as soon as the turn is over,
at a point where every entry is accounted for.

This needs a handler of our own for SIGINT. It is installed only while
SIGINT has Python's default handler (``signal.default_int_handler``), and
outside a turn it does what that handler does: raise ``KeyboardInterrupt``.
A handler the program installed itself is left alone (it runs where Python
runs it; see docs/design.md §6).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_MAIN_IDENT = threading.main_thread().ident


class _State:
    depth = 0
    pending = False
    installed = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _State.depth:
        _State.pending = True  # raised when the turn ends (_Deferred.__exit__)
        return
    raise KeyboardInterrupt


def _install() -> None:
    """Take over SIGINT while it has Python's default handler (main thread only)."""
    _State.installed = True  # once: a program that later installs its own handler keeps it
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main interpreter's main thread after all
        pass


class _Deferred:
    """The context manager :func:`deferred` returns (one object, no allocation per turn)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if threading.get_ident() != _MAIN_IDENT:
            return  # no handler runs on other threads
        if not _State.installed:
            _install()
        _State.depth += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if threading.get_ident() != _MAIN_IDENT:
            return
        _State.depth -= 1
        if not _State.depth and _State.pending and exc_type is None:
            _State.pending = False  # (with an exception on its way out, it waits for the next turn's end)
            raise KeyboardInterrupt


_DEFERRED = _Deferred()


def deferred() -> _Deferred:
    """A context in which SIGINT is held back until it ends (see the module doc)."""
    return _DEFERRED
