"""A futex word with coalescing wake-ups, and an event built on it.

State of the word: 0 nothing pending, 1 notified, 2 a waiter sleeps. A
small lock makes the transitions atomic (Python has no compare-and-swap);
the kernel is entered only to sleep, or to wake a sleeper: a notify with
nobody asleep costs no system call at all.
"""

from __future__ import annotations

import errno
import struct
import threading
import time

from ksvc_host import native
from ksvc_host.abi.syscalls import SYSCALLS

_NR_FUTEX = SYSCALLS["futex"]
FUTEX_WAIT_PRIVATE = 0 | 128
FUTEX_WAKE_PRIVATE = 1 | 128
_IDLE, _NOTIFIED, _SLEEPING = 0, 1, 2


class FutexWord:
    """One waiter-side futex: ``notify`` from anywhere, ``wait`` from the consumer."""

    def __init__(self) -> None:
        self._mem = native.ffi.new("uint32_t *", _IDLE)
        self._addr = native.address_of(self._mem)
        self._ts = native.ffi.new("long long[2]")
        self._lock = threading.Lock()
        self.wake_calls = 0
        """futex(FUTEX_WAKE) syscalls made."""

    def notify(self) -> None:
        """Mark notified; wake a sleeper if there is one. Never blocks."""
        mem = self._mem
        if mem[0] == _NOTIFIED:
            return
        with self._lock:
            prev = mem[0]
            mem[0] = _NOTIFIED
        if prev == _SLEEPING:
            self.wake_calls += 1
            native.syscall(_NR_FUTEX, self._addr, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until notified or *timeout*; consume the notification."""
        mem = self._mem
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if mem[0] == _NOTIFIED:
                    mem[0] = _IDLE
                    return True
                mem[0] = _SLEEPING
            ts = 0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    with self._lock:
                        if mem[0] == _NOTIFIED:
                            mem[0] = _IDLE
                            return True
                        mem[0] = _IDLE
                    return False
                struct.pack_into("<qq", native.ffi.buffer(self._ts), 0, int(left), int((left % 1) * 1e9))
                ts = native.address_of(self._ts)
            # The kernel sleeps only if the word still says SLEEPING: a notify in between returns at once.
            ret = native.syscall(_NR_FUTEX, self._addr, FUTEX_WAIT_PRIVATE, _SLEEPING, ts, 0, 0)
            if ret < 0 and ret not in (-errno.EAGAIN, -errno.EINTR, -errno.ETIMEDOUT):
                raise OSError(-ret, f"futex wait failed: {ret}")

    def clear(self) -> None:
        """Drop a pending notification."""
        with self._lock:
            if self._mem[0] == _NOTIFIED:
                self._mem[0] = _IDLE


class FutexEvent:
    """A one-shot event (``set``/``wait``/``is_set``) on a futex word, for one waiting caller."""

    __slots__ = ("_word", "_set")

    def __init__(self) -> None:
        self._word = FutexWord()
        self._set = False

    def set(self) -> None:
        """Wake the waiter."""
        self._set = True
        self._word.notify()

    def is_set(self) -> bool:
        """True once set."""
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set."""
        while not self._set:
            if not self._word.wait(timeout) and timeout is not None:
                return self._set
        return True
