"""The lanes of the basic io backend: a per-thread io_uring each (:class:`~ksvc_host.traits.OwnRings`).

A lane (``ksvc_basic._lane.Lane``, compiled from ``lane.c``) carries a call
from the caller to the kernel and back in one C call: the submit entry, the
turn (route, translate to an SQE, ``io_uring_enter``), the completion entry
and the result. Its pure-Python twin, :mod:`ksvc_basic.lane_reference`, is
the specification lane.c is checked against; it is used on the pure path
(:data:`ksvc_host.fastpath.IMPLEMENTATION`) and when lane.c was not built.
Only its owning thread submits to its ring, so the kernel's single-issuer
mode applies, and deferred task running: completions are
processed when that thread asks for them, not by interrupting it.

:data:`LANE_CALLS` is the translation table: which syscalls a lane turns
into which io_uring operation, and what kind of call each is (the checks
lane.c makes before taking one).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Final

from ksvc_basic import lane_reference
from ksvc_host import fastpath
from ksvc_host.abi import io_uring as U
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.traits import Lane

try:
    from ksvc_basic import _lane  # type: ignore[attr-defined]
except ImportError as exc:  # not built: the twin runs the lanes
    _lane = None
    _NOT_BUILT = f"the compiled lane (ksvc_basic._lane) is not built ({exc}); lanes run in pure Python"
else:
    _NOT_BUILT = ""

LANE_CALLS: Final[dict[str, tuple[U.IoringOp, str]]] = {
    "read": (U.IoringOp.READ, "stream"),
    "write": (U.IoringOp.WRITE, "stream"),
    "pread64": (U.IoringOp.READ, "positioned"),
    "pwrite64": (U.IoringOp.WRITE, "positioned"),
    "recvfrom": (U.IoringOp.RECV, "socket"),
    "sendto": (U.IoringOp.SEND, "socket"),
    "close": (U.IoringOp.CLOSE, "close"),
    "fsync": (U.IoringOp.FSYNC, "fsync"),
    "fdatasync": (U.IoringOp.FSYNC, "fdatasync"),
    "openat": (U.IoringOp.OPENAT, "openat"),
    "accept4": (U.IoringOp.ACCEPT, "accept"),
    "accept": (U.IoringOp.ACCEPT, "accept_plain"),
    "connect": (U.IoringOp.CONNECT, "connect"),
}
"""The syscalls a lane translates: io_uring opcode and the kind of call (see lane.c)."""

_F = U.SetupFlag
SETUP_FLAGS: Final = _F.SINGLE_ISSUER | _F.DEFER_TASKRUN | _F.COOP_TASKRUN | _F.SUBMIT_ALL
"""Asked of every lane's ring; the lane drops those the kernel lacks, newest first."""

_warned = False


def lane_module() -> Any:
    """The lanes' implementation: lane.c on the native fast path (when built), else its pure-Python twin."""
    global _warned
    if fastpath.IMPLEMENTATION == "native":
        if _lane is not None:
            return _lane
        if not _warned:
            _warned = True
            print(f"ksvc-basic: {_NOT_BUILT}", file=sys.stderr)
    return lane_reference


class UringLanes:
    """Builds lanes for the kernel's supported opcodes (:class:`~ksvc_host.traits.LaneBuilder`)."""

    def __init__(self, opcodes: frozenset[int]) -> None:
        self._table = {
            SYSCALLS[name]: (int(opcode), kind) for name, (opcode, kind) in LANE_CALLS.items() if int(opcode) in opcodes
        }
        self.calls: frozenset[int] = frozenset(self._table)

    def build(self, routes: Iterable[int], *, entries: int, slots: int, settle_s: float) -> Lane:
        """A lane owned by the calling thread taking *routes* (``OSError`` when the kernel gives no ring)."""
        module = lane_module()
        lane: Any = module.Lane(entries, int(SETUP_FLAGS), settle_s, slots)
        kinds = module.KINDS
        for nr in routes:
            opcode, kind = self._table[nr]
            lane.route(nr, opcode, kinds[kind])
        return lane
