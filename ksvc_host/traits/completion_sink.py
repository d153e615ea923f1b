"""CompletionSink: where the dispatcher puts results."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


@runtime_checkable
class CompletionSink(Protocol):
    """Delivers ``(corr_id, result, flags)`` completions to the consumer.

    Contract: ``push`` returns ``False`` when there is no room (the
    dispatcher keeps the completion and retries: nothing is lost);
    ``push_batch`` accepts a prefix and returns its length;
    ``flush_and_notify`` publishes what was pushed and wakes the consumer
    once; it is called once per dispatcher loop, only after a push.
    """

    name: str

    def push(self, corr_id: int, result: int, flags: int = 0) -> bool:
        """Add one completion; ``False`` when full."""
        ...

    def push_batch(self, items: Iterable[tuple[int, int, int]]) -> int:
        """Add completions in order until one does not fit; return how many were added."""
        ...

    def flush_and_notify(self) -> None:
        """Publish pushed completions and notify once."""
        ...
