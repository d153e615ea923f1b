"""The waiter in plain Python: the specification ``ksvc_basic/waiter.h`` is checked against.

A :class:`Waiter` is the future of a loop lane's entry. It has the part of
``asyncio.Future``'s protocol that a Task and the front end use (asyncio
accepts any object with ``_asyncio_future_blocking``, ``get_loop``,
``add_done_callback``, ``result`` and ``cancel``). Resolved inside a lane's
turn (between :func:`batch_open` and :func:`batch_close`), it joins the
turn's batch, and the turn's end wakes each waiting task directly, in the
task's context, in the order the completions came, instead of one
``loop.call_soon`` handle per operation for the loop's next iteration.
Resolved anywhere else, it schedules its callbacks with ``call_soon``, as a
Future does. A turn called from inside a task (asyncio lets no other task
step while one runs) leaves its batch to ``call_soon``.

A callback that raises an ``Exception`` is reported to the loop's exception
handler, as the loop does for a handle; a ``BaseException`` propagates out
of the turn, the callbacks not yet run scheduled with ``call_soon`` first.

A waiter started as one lane entry settles its own cancellation: ``cancel()``
asks the kernel to cancel the entry and the waiter stays pending until the
kernel answers (at most the lane's settle time). Cancelled in the kernel, or
failed, it ends cancelled; done anyway, it ends with the value, and the task
that takes it is uncancelled (as ``asyncio.wait_for`` delivers a result that
won the race), so no byte read or written goes unseen. A cancellation thrown
into a task awaiting one that is already done takes the value the same way.
It is also a coroutine (``send``, ``throw``, ``close``): a front end can return
it as the operation itself, and ``asyncio.create_task`` accepts it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, Protocol

_PENDING, _RESULT, _EXCEPTION, _CANCELLED = range(4)

Callback = tuple[Callable[[Any], Any], contextvars.Context]


class _SettlingLane(Protocol):
    def _settle_entry(self, token: int, w: Waiter) -> float | None:
        """Ask the kernel to cancel *w*'s entry: the settle time, or None (no such entry)."""
        ...


class _Batches(threading.local):
    current: list[Waiter] | None = None
    """The waiters resolved in the turn running on this thread (``None``: no turn)."""


_batches = _Batches()


class Waiter:
    """``Waiter(loop)``: the future of a loop lane's entry; woken at the end of the turn that resolves it."""

    __slots__ = ("_loop", "_callbacks", "_value", "_cancel_msg", "_state", "_asyncio_future_blocking",
                 "_lane", "_token", "_timer", "_entry", "_settling", "__weakref__")  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._callbacks: list[Callback] = []
        self._value: Any = None
        self._cancel_msg: Any = None
        self._state = _PENDING
        self._asyncio_future_blocking = False
        self._lane: _SettlingLane | None = None  # the lane whose entry resolves it, while pending
        self._token = 0
        self._timer: asyncio.TimerHandle | None = None  # while settling: the settle time's end
        self._entry = False  # started as one lane entry: a late cancellation takes its value
        self._settling = False  # cancel() asked the kernel to cancel the entry

    def _bind(self, lane: _SettlingLane, token: int) -> None:
        """Started as *lane*'s entry *token* (the lane calls this)."""
        self._lane, self._token, self._entry = lane, token, True

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def _cancelled_error(self) -> asyncio.CancelledError:
        return asyncio.CancelledError() if self._cancel_msg is None else asyncio.CancelledError(self._cancel_msg)

    _make_cancelled_error = _cancelled_error  # what asyncio.gather takes from a cancelled child

    @property
    def _cancel_message(self) -> Any:
        return self._cancel_msg

    def result(self) -> Any:
        if self._state == _RESULT:
            return self._value
        if self._state == _EXCEPTION:
            raise self._value
        if self._state == _CANCELLED:
            raise self._cancelled_error()
        raise asyncio.InvalidStateError("Result is not ready.")

    def exception(self) -> BaseException | None:
        if self._state == _RESULT:
            return None
        if self._state == _EXCEPTION:
            return self._value
        if self._state == _CANCELLED:
            raise self._cancelled_error()
        raise asyncio.InvalidStateError("Exception is not set.")

    def _set(self, state: int, value: Any) -> None:
        if self._state != _PENDING:
            raise asyncio.InvalidStateError("invalid state")
        self._state = state
        self._value = value
        self._release()
        self._done()

    def _release(self) -> None:
        """Done: let go of the lane, and of the settle time's handle (cancelled)."""
        self._lane = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _cancel_now(self) -> None:
        self._state = _CANCELLED
        self._release()
        self._done()

    def set_result(self, value: Any) -> None:
        self._set(_RESULT, value)

    def set_exception(self, exc: Any) -> None:
        e = exc() if isinstance(exc, type) else exc
        if not isinstance(e, BaseException) or isinstance(e, StopIteration):
            raise TypeError("set_exception: an exception other than StopIteration is required")
        self._set(_EXCEPTION, e)

    def cancel(self, msg: Any = None) -> bool:
        if self._state != _PENDING:
            return False
        if self._settling:
            return True  # asked already: the settle goes on
        self._cancel_msg = msg
        if self._lane is not None:
            secs = self._lane._settle_entry(self._token, self)
            if secs is not None:
                self._settling = True
                self._timer = self._loop.call_later(secs, self._expire)
                return True
        self._cancel_now()
        return True

    def _expire(self) -> None:
        """The settle time passed and the kernel has not answered: cancelled (the lane keeps the memory)."""
        self._timer = None
        if self._state == _PENDING:
            self._cancel_now()

    def _uncancel(self) -> None:
        """The task taking a value that a cancellation did not stop: it is not cancelled (as wait_for)."""
        self._settling = False
        task = asyncio.current_task(self._loop)
        if task is not None:
            task.uncancel()

    def add_done_callback(self, fn: Callable[[Any], Any], *, context: contextvars.Context | None = None) -> None:
        ctx = contextvars.copy_context() if context is None else context
        if self._state != _PENDING:
            self._loop.call_soon(fn, self, context=ctx)
        else:
            self._callbacks.append((fn, ctx))

    def remove_done_callback(self, fn: Callable[[Any], Any]) -> int:
        kept = [cb for cb in self._callbacks if cb[0] != fn]
        removed = len(self._callbacks) - len(kept)
        self._callbacks[:] = kept
        return removed

    def __await__(self) -> Waiter:
        return self

    def __iter__(self) -> Waiter:
        return self

    def __next__(self) -> Any:
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            return self
        if self._settling and self._state == _RESULT:
            self._uncancel()
        raise StopIteration(self.result())

    def send(self, value: Any) -> Any:
        """The coroutine protocol's step (the value is ignored, as a Future's iterator does)."""
        return self.__next__()

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """A CancelledError thrown into a task awaiting an entry's waiter settles the entry (pending) or
        takes its value (done, and not failed); anything else is raised."""
        if isinstance(typ, BaseException):
            e = typ
        elif isinstance(typ, type) and issubclass(typ, BaseException):
            e = typ() if val is None else val if isinstance(val, BaseException) else typ(val)
        else:
            raise TypeError("exceptions must derive from BaseException")
        if tb is not None:
            e = e.with_traceback(tb)
        if self._entry and isinstance(e, asyncio.CancelledError):
            if self._state == _PENDING:
                self.cancel()
                if self._state == _PENDING:  # settling: wait for the kernel's answer
                    self._asyncio_future_blocking = True
                    return self
            elif self._state == _RESULT and not (self._value.__class__ is int and self._value < 0):
                self._uncancel()
                raise StopIteration(self._value)
        raise e

    def close(self) -> None:
        """Nothing to close (the entry runs on)."""

    def _done(self) -> None:
        """Done: into the running turn's batch, or the callbacks through ``call_soon``."""
        if not self._callbacks:
            return
        batch = _batches.current
        if batch is not None:
            batch.append(self)
            return
        self._schedule_rest()

    def _schedule_rest(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn, ctx in callbacks:
            self._loop.call_soon(fn, self, context=ctx)

    def _wake(self) -> None:
        """Run the callbacks now, each in its context; a BaseException propagates, the rest scheduled."""
        while self._callbacks:
            fn, ctx = self._callbacks.pop(0)
            ran = [False]

            def call(fn: Callable[[Any], Any] = fn, ran: list[bool] = ran) -> Any:
                ran[0] = True
                return fn(self)

            try:
                ctx.run(call)
            except RuntimeError as exc:
                if ran[0]:
                    self._report(exc)
                else:  # the context is entered already (a task running this turn): as a Future would
                    self._loop.call_soon(fn, self, context=ctx)
            except Exception as exc:  # noqa: BLE001 - reported as the loop reports a handle's
                self._report(exc)
            except BaseException:
                self._schedule_rest()
                raise

    def _report(self, exc: BaseException) -> None:
        self._loop.call_exception_handler({"message": "Exception in a callback of a KSVC lane's waiter",
                                           "exception": exc, "future": self})  # fmt: skip


def batch_open() -> list[Waiter] | None:
    """Start a turn's batch on this thread; returns the outer batch, for :func:`batch_close`."""
    outer = _batches.current
    _batches.current = []
    return outer


def batch_close(outer: list[Waiter] | None, *, wake: bool = True) -> None:
    """End this thread's batch: wake every task it resolved (with *wake* false: schedule them instead)."""
    woken = _batches.current or []
    _batches.current = outer
    loop: Any = None  # the loop last asked about, and whether a task of it is running now
    busy = False
    for i, w in enumerate(woken):
        if w._loop is not loop:
            loop = w._loop
            busy = asyncio.current_task(loop) is not None  # asyncio lets no other task step inside one
        if busy or not wake:
            w._schedule_rest()
            continue
        try:
            w._wake()
        except BaseException:
            for rest in woken[i + 1 :]:
                rest._schedule_rest()
            raise
