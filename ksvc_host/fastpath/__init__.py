"""The channel's per-entry loops, compiled (cffi API mode) or in plain Python.

``ksvc_host._fastpath`` is built from ``fastpath.c`` when the package is
installed. When it could not be built, or ``KSVC_PURE_PYTHON=1`` is set, the
same functions come from :mod:`ksvc_host.fastpath.reference`; results
are identical either way, only the speed differs. ``lib.new_bytes`` (from
``bytes_alloc.c``) gives streams bytes objects to read into; it is ``None`` on
the pure path, where reads are copied out of a staging buffer. :data:`IMPLEMENTATION`
says which one is in use, and ``ksvc plugins`` shows it. The io backend's
own compiled loops (ksvc-basic's lanes and express lane) follow the same
choice.

The bulk table (``struct ksvc_bulk``) is filled through :func:`arm_group` and
:func:`disarm_group`: ``ksvc_bulk_reap`` checks every completion entry
against its group's length and completion bitmap, so those must be set
together with the results array.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Final

from ksvc_host.channel.ring import RingCorrupted
from ksvc_host.fastpath import reference as _reference
from ksvc_host.fastpath.cdef import BULK_GROUPS

ENV_PURE: Final = "KSVC_PURE_PYTHON"
"""Set to ``1`` to use the pure-Python reference loops even when the compiled ones exist."""

_PURE_VALUES = ("1", "true", "yes", "on")


def _load(pure: bool) -> tuple[str, Any, Any, str]:
    if not pure:
        try:
            from ksvc_host import _bytes_alloc, _fastpath  # type: ignore[attr-defined]

            lib = _fastpath.lib
            return "native", _fastpath.ffi, _Native(lib, _bytes_alloc.new_bytes), ""
        except ImportError as exc:
            why = f"the compiled fast path is not available ({exc}); using the pure-Python loops"
    else:
        why = f"{ENV_PURE} is set; using the pure-Python loops"
    reference = _reference

    class _Lib:
        ksvc_submit_strided = staticmethod(reference.submit_strided)
        ksvc_bulk_reap = staticmethod(reference.bulk_reap)
        new_bytes = None  # reads go to a staging buffer and are copied out (the reference behaviour)

    return "python", reference.ffi, _Lib(), why


class _Native:
    """The compiled loops, plus ``new_bytes`` (bytes objects for reads to fill in place)."""

    def __init__(self, lib: Any, new_bytes: Any) -> None:
        self.ksvc_submit_strided = lib.ksvc_submit_strided
        self.ksvc_bulk_reap = lib.ksvc_bulk_reap
        self.new_bytes = new_bytes


IMPLEMENTATION: str
"""``"native"`` (compiled) or ``"python"`` (reference)."""
REASON: str
"""Why the pure-Python loops are in use (empty when native)."""
ffi: Any
lib: Any
_warned = False


def select(pure: bool | None = None) -> str:
    """(Re)select the implementation: *pure* forces it, ``None`` follows the environment."""
    global IMPLEMENTATION, REASON, ffi, lib
    if pure is None:
        pure = os.environ.get(ENV_PURE, "").strip().lower() in _PURE_VALUES
    IMPLEMENTATION, ffi, lib, REASON = _load(pure)
    return IMPLEMENTATION


def arm_group(table: Any, g: int, results: Any, n: int) -> Any:
    """Make group *g* of *table* live: *n* entries, results into *results* (at least *n* ``int64_t``).

    Returns the group's completion bitmap: keep it alive until
    :func:`disarm_group` (``ksvc_bulk_reap`` writes to it).
    """
    if not 0 < n <= 1 << int(table.index_bits):
        raise ValueError(f"a bulk group holds 1 to {1 << int(table.index_bits)} entries, got {n}")
    seen = ffi.new("uint64_t[]", (n + 63) // 64)
    table.results[g] = results
    table.seen[g] = seen
    table.n[g] = n
    table.left[g] = n
    return seen


def disarm_group(table: Any, g: int) -> None:
    """Group *g* is finished or abandoned: any completion for it from now on is invalid."""
    table.left[g] = 0
    table.n[g] = 0
    table.results[g] = ffi.NULL
    table.seen[g] = ffi.NULL


def complete_entry(table: Any, corr: int, result: int) -> int:
    """One bulk entry's completion outside ``ksvc_bulk_reap`` (direct delivery), checked the same way.

    Returns the group when this finished it, else -1; raises
    :class:`~ksvc_host.channel.ring.RingCorrupted` (nothing written) for an
    entry no correct peer sends.
    """
    at = _reference.bulk_slot(table, corr)
    if at is None:
        raise RingCorrupted(f"completion for bulk entry {corr:#x}: no such live group, index or pending entry")
    g, i = at
    return g if _reference.bulk_store(table, g, i, result) else -1


def note_once() -> None:
    """Say once per process, on stderr, that the pure path is in use because the build failed."""
    global _warned
    if _warned or IMPLEMENTATION == "native" or ENV_PURE in REASON:
        return
    _warned = True
    print(f"ksvc: {REASON}", file=sys.stderr)


select()

__all__ = [
    "BULK_GROUPS",
    "ENV_PURE",
    "IMPLEMENTATION",
    "REASON",
    "arm_group",
    "complete_entry",
    "disarm_group",
    "ffi",
    "lib",
    "note_once",
    "select",
]
