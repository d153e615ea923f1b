"""FutexNotifier: wakes the consumer through a futex word instead of an eventfd."""

from __future__ import annotations

from ksvc_futex.futex import FutexWord


class FutexNotifier:
    """Notifier ``futex``: no descriptor; a notify with no sleeping consumer makes no syscall.

    asyncio front ends wait for it on a small helper thread, since there
    is no descriptor to give the event loop.
    """

    name = "futex"

    def __init__(self) -> None:
        self._word = FutexWord()
        self._closed = False

    @property
    def wake_calls(self) -> int:
        """futex(FUTEX_WAKE) syscalls made so far."""
        return self._word.wake_calls

    def notify(self) -> None:
        """Wake the consumer. Never blocks; coalesces."""
        if self._closed:
            raise ValueError("notifier is closed")
        self._word.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until notified or *timeout*; consume the notification."""
        return self._word.wait(timeout)

    def clear(self) -> None:
        """Consume a pending notification."""
        self._word.clear()

    def fileno(self) -> None:
        """No descriptor: a futex is not pollable."""
        return None

    def close(self) -> None:
        """Mark closed (the word is freed with the object). Idempotent."""
        self._closed = True
