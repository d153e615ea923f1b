"""RingCompletionSink: completions into the channel's completion ring, one notify per batch."""

from __future__ import annotations

from collections.abc import Iterable

from ksvc_host.abi import layout as L
from ksvc_host.channel.ring import Ring
from ksvc_host.traits import Notifier


class RingCompletionSink:
    """Writes completion entries into the mmap'd ring and wakes the consumer once per flush.

    Entries become visible to the consumer only at :meth:`flush_and_notify`,
    when the tail is published: a batch appears at once, with one wake-up.
    """

    name = "ring"

    def __init__(self, ring: Ring, notifier: Notifier) -> None:
        self.ring = ring
        self.notifier = notifier
        self._tail = ring.tail
        self._pack = L.COMPLETION_ENTRY.pack_into
        self.notifications = 0
        self._unnotified = False

    @property
    def pending_tail(self) -> int:
        """The tail as written so far (published at the next :meth:`flush_and_notify`)."""
        return self._tail

    @pending_tail.setter
    def pending_tail(self, tail: int) -> None:
        """Entries up to *tail* were written by the express lane, straight into the ring."""
        self._tail = tail

    def push(self, corr_id: int, result: int, flags: int = 0) -> bool:
        """Write one entry; ``False`` when the ring is full (the consumer has not caught up)."""
        ring = self.ring
        if self._tail - ring.head >= ring.size:
            return False
        self._pack(ring.buf, ring.slot_offset(self._tail), corr_id, result, flags, 0)
        self._tail += 1
        return True

    def push_batch(self, items: Iterable[tuple[int, int, int]]) -> int:
        """Write entries in order until one does not fit; return how many were written."""
        count = 0
        for corr_id, result, flags in items:
            if not self.push(corr_id, result, flags):
                break
            count += 1
        return count

    def flush_and_notify(self) -> None:
        """Publish the tail and notify once, if anything new was written (or published quietly)."""
        if self._tail != self.ring.tail or self._unnotified:
            self.ring.publish_tail(self._tail)
            self._unnotified = False
            self.notifications += 1
            self.notifier.notify()

    def publish_quietly(self) -> None:
        """Publish the tail without a wake-up: the consumer runs this turn itself and reaps next.

        The next :meth:`flush_and_notify` notifies even when nothing new was
        written since, so a consumer that was asleep meanwhile still wakes.
        """
        if self._tail != self.ring.tail:
            self.ring.publish_tail(self._tail)
            self._unnotified = True
