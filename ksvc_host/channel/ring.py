"""A single-producer, single-consumer ring over shared memory (docs/design.md §4).

The header holds ``head`` (advanced by the consumer) and ``tail`` (advanced
by the producer) as free-running u64 counters; an entry's slot is
``counter & mask``. Empty: ``head == tail``; full: ``tail - head >= size``.

Entries are written fully before ``tail`` is published, and read fully
before ``head`` is published. On x86-64 stores are not reordered with other
stores nor loads with other loads, and Python does no reordering of its own,
so plain 8-byte stores through ``struct.pack_into`` are enough here.

A ring cannot trust the other side: :meth:`Ring.check` validates the
counters a peer wrote, so a corrupted header is reported, never followed
out of bounds.
"""

from __future__ import annotations

import struct
from typing import Final

from ksvc_host import native
from ksvc_host.abi import layout as L

_U64 = struct.Struct("<Q")
_HEAD: Final = L.RING_HEAD_OFFSET
_TAIL: Final = L.RING_TAIL_OFFSET


class RingCorrupted(RuntimeError):
    """The ring header holds values no correct peer writes."""


class Ring:
    """View of one ring inside a shared buffer.

    *buf* is a writable memoryview starting at the ring header. With
    ``initialize=True`` the header is written (the producer side of an
    emulated channel does this); otherwise it is validated.
    """

    def __init__(self, buf: memoryview, entries: int, entry_size: int, *, initialize: bool) -> None:
        L.check_ring_entries(entries, "ring entries")
        if len(buf) < L.ring_bytes(entries, entry_size):
            raise ValueError(f"ring buffer of {len(buf)} bytes is too small for {entries} entries")
        self.buf = buf
        self.size = entries
        self.mask = entries - 1
        self.entry_size = entry_size
        self._address: int | None = None
        if initialize:
            L.RING_HEADER.pack_into(buf, 0, L.RING_MAGIC, entries, entries - 1, entry_size)
            _U64.pack_into(buf, _HEAD, 0)
            _U64.pack_into(buf, _TAIL, 0)
        else:
            magic, size, mask, esize = L.RING_HEADER.unpack_from(buf, 0)
            if (magic, size, mask, esize) != (L.RING_MAGIC, entries, entries - 1, entry_size):
                raise RingCorrupted(
                    f"ring header mismatch: magic={magic:#x} size={size} mask={mask} entry_size={esize}"
                )

    @property
    def address(self) -> int:
        """Address of the ring header in memory (for the compiled loops of ``ksvc_host.fastpath``)."""
        if self._address is None:
            self._address = native.address_of(native.ffi.from_buffer(self.buf))
        return self._address

    # Counters ---------------------------------------------------------------

    @property
    def head(self) -> int:
        """Consumer counter."""
        return int(_U64.unpack_from(self.buf, _HEAD)[0])

    @property
    def tail(self) -> int:
        """Producer counter."""
        return int(_U64.unpack_from(self.buf, _TAIL)[0])

    def publish_head(self, head: int) -> None:
        """Consumer: mark everything before *head* as consumed."""
        _U64.pack_into(self.buf, _HEAD, head & 0xFFFF_FFFF_FFFF_FFFF)

    def publish_tail(self, tail: int) -> None:
        """Producer: make everything before *tail* visible."""
        _U64.pack_into(self.buf, _TAIL, tail & 0xFFFF_FFFF_FFFF_FFFF)

    def check(self, head: int, tail: int) -> int:
        """Return the number of filled entries, or raise :class:`RingCorrupted`."""
        used = (tail - head) & 0xFFFF_FFFF_FFFF_FFFF
        if used > self.size:
            raise RingCorrupted(f"ring counters out of range: head={head} tail={tail} size={self.size}")
        return used

    def used(self) -> int:
        """Entries written and not yet consumed."""
        return self.check(self.head, self.tail)

    def free(self) -> int:
        """Entries that can be written now."""
        return self.size - self.used()

    def slot_offset(self, counter: int) -> int:
        """Byte offset of the entry for *counter*."""
        return L.RING_ENTRIES_OFFSET + (counter & self.mask) * self.entry_size
