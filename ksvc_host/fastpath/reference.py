"""The fast path's loops in plain Python: the reference ``fastpath.c`` is checked against.

Each function does what its C namesake does, on the same memory, through
cffi pointers; ``KSVC_PURE_PYTHON=1`` selects these, and the tests run both.
x86-64 keeps stores in order and loads in order, and the interpreter does
no reordering of its own, so plain loads and stores stand in for C's
acquire and release.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

import cffi

from ksvc_host.abi import layout as L
from ksvc_host.fastpath.cdef import BULK_GROUPS, STRUCTS

ffi = cffi.FFI()
ffi.cdef(STRUCTS)

_U64 = struct.Struct("<Q")
_SUBMIT_WORDS = struct.Struct("<8Q")
_COMPLETE_WORDS = struct.Struct("<QqII")


def _view(ptr: Any, size: int) -> Any:
    return ffi.buffer(ffi.cast("char *", ptr), size)


def _ring_view(ring_addr: Any, entries: int, entry_size: int) -> Any:
    return _view(ring_addr, L.RING_ENTRIES_OFFSET + entries * entry_size)


def submit_strided(
    ring: Any, tail: int, mask: int, corr0: int, nr: int, fd: int, addr0: int, stride: int, length: int,
    offsets: Any, addrs: Any, n: int,
) -> int:
    """Write *n* submit entries ``nr(fd, addrs[i] or addr0 + i*stride, length, offsets[i])``; publish the tail."""
    buf = _ring_view(ring, mask + 1, L.SUBMIT_ENTRY_SIZE)
    by_table = addrs != ffi.NULL and addrs is not None
    for i in range(n):
        off = int(offsets[i]) if offsets != ffi.NULL and offsets is not None else 0
        addr = int(addrs[i]) if by_table else addr0 + i * stride
        slot = L.RING_ENTRIES_OFFSET + ((tail + i) & mask) * L.SUBMIT_ENTRY_SIZE
        _SUBMIT_WORDS.pack_into(buf, slot, corr0 + i, nr, fd, addr, length, off, 0, 0)
    _U64.pack_into(buf, L.RING_TAIL_OFFSET, tail + n)
    return n


def bulk_slot(b: Any, corr: int) -> tuple[int, int] | None:
    """``(group, index)`` of a bulk entry's correlation id, or ``None`` when no correct peer writes it.

    Valid means: a live group, an index below the group's length, and an
    entry that has not completed yet (see ``ksvc_bulk_reap`` in ``fastpath.c``).
    """
    rest = corr & ~int(b.bit)
    g = rest >> b.index_bits  # not masked: high garbage must not alias a group
    i = rest & ((1 << b.index_bits) - 1)
    if g >= BULK_GROUPS or b.results[g] == ffi.NULL or b.seen[g] == ffi.NULL or not b.left[g] or i >= b.n[g]:
        return None
    if (b.seen[g][i >> 6] >> (i & 63)) & 1:
        return None
    return g, i


def bulk_store(b: Any, g: int, i: int, res: int) -> bool:
    """Record entry *i* of group *g* (checked by :func:`bulk_slot`); True when that finished the group."""
    b.seen[g][i >> 6] |= 1 << (i & 63)
    b.results[g][i] = res
    b.left[g] -= 1
    return not b.left[g]


def bulk_reap(
    cring: Any, head: int, tail: int, mask: int, b: Any, other: Any, max_other: int, done: Any, max_done: int,
    counts: Any,
) -> int:
    """Route completion entries: bulk ones into their group's results, others out; see ``fastpath.c``.

    An invalid bulk entry is consumed with nothing written, and ends the
    call with ``-EUCLEAN`` (``counts`` still say what was done).
    """
    buf = _ring_view(cring, mask + 1, L.COMPLETION_ENTRY_SIZE)
    n_other = n_done = 0
    h = head
    bit = int(b.bit)
    corrupt = False
    while h != tail:
        slot = L.RING_ENTRIES_OFFSET + (h & mask) * L.COMPLETION_ENTRY_SIZE
        corr, res, flags, _ = _COMPLETE_WORDS.unpack_from(buf, slot)
        if corr & bit:
            at = bulk_slot(b, corr)
            if at is None:
                h += 1
                corrupt = True
                break
            g, i = at
            if b.left[g] == 1 and n_done == max_done:
                break
            if bulk_store(b, g, i, res):
                done[n_done] = g
                n_done += 1
        else:
            if n_other == max_other:
                break
            base = 3 * n_other
            other[base], other[base + 1], other[base + 2] = corr, res & 0xFFFF_FFFF_FFFF_FFFF, flags
            n_other += 1
        h += 1
    counts[0], counts[1], counts[2] = h - head, n_other, n_done
    return -errno.EUCLEAN if corrupt else h - head
