"""Notifier: wakes the completion consumer once per batch."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Notifier(Protocol):
    """Signals that completions are ready.

    Contract: ``notify`` never blocks and notifications coalesce (many
    ``notify`` calls before one ``wait`` wake it once); ``wait`` returns
    ``True`` when a notification was pending or arrived within *timeout*,
    ``False`` on timeout, and consumes the notification; ``fileno`` is a
    descriptor that polls readable while a notification is pending (for
    epoll/asyncio), or ``None`` when the mechanism has none.
    """

    name: str

    def notify(self) -> None:
        """Signal the consumer. Never blocks."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified or *timeout* seconds pass; consume the notification."""
        ...

    def clear(self) -> None:
        """Consume a pending notification without blocking."""
        ...

    def fileno(self) -> int | None:
        """A pollable descriptor, or ``None``."""
        ...

    def close(self) -> None:
        """Release the descriptor or word."""
        ...
