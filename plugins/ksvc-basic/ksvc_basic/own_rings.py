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

:mod:`ksvc_basic.translation` says which syscalls a lane turns into which
io_uring operation, and when (``translation.h`` for lane.c).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final

from ksvc_basic import lane_reference, translation
from ksvc_host import fastpath
from ksvc_host.abi import io_uring as U
from ksvc_host.traits import Lane

try:
    from ksvc_basic import _lane  # type: ignore[attr-defined]
except ImportError as exc:  # not built: the twin runs the lanes
    _lane = None
    _NOT_BUILT = f"the compiled lane (ksvc_basic._lane) is not built ({exc}); lanes run in pure Python"
else:
    _NOT_BUILT = ""

_F = U.SetupFlag
SETUP_FLAGS: Final = _F.SINGLE_ISSUER | _F.COOP_TASKRUN | _F.SUBMIT_ALL
"""Asked of every lane's ring; the lane drops those the kernel lacks, newest first. Not DEFER_TASKRUN: with
it the kernel posts a completion only when the ring's thread next enters, and the eventfd that wakes an
event loop's lane came late (an idle connection's echo took 4-8 ms instead of ~0.1 ms)."""

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
        self._table = translation.table(opcodes)
        self.calls: frozenset[int] = frozenset(self._table)
        self._module = lane_module()  # chosen with the instance: lanes built later are of the same kind

    def waiter(self, loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
        """A maker of the futures of *loop*'s lane entries (lane.c's ``Waiter``, or its twin's)."""
        return functools.partial(self._module.Waiter, loop)

    def build(self, routes: Iterable[int], *, entries: int, slots: int, settle_s: float) -> Lane:
        """A lane owned by the calling thread taking *routes* (``OSError`` when the kernel gives no ring)."""
        lane: Any = self._module.Lane(entries, int(SETUP_FLAGS), settle_s, slots)
        for nr in routes:
            opcode, kind = self._table[nr]
            lane.route(nr, opcode, kind)
        return lane
