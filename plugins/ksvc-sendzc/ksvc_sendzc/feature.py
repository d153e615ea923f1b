"""The ``send-zc`` feature: sends as IORING_OP_SEND_ZC.

A zero-copy send completes twice: first with the byte count (flagged
MORE), then with a notification (flagged NOTIF) once the kernel no longer
needs the buffer. The feature swallows the first CQE, keeps its result,
and hands the result on with the notification, so the caller gets one
completion, and its buffer stays referenced until the kernel is done.
Sends smaller than ``min_size`` stay ordinary sends (zero copy does not
pay for them).
"""

from __future__ import annotations

from typing import Any

from ksvc_host.abi.io_uring import CqeFlag, IoringOp
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec


class SendZeroCopy:
    """Feature ``send-zc``."""

    express_transparent = True
    """Filters only the CQEs of its own SEND_ZC requests: other completions may bypass it."""

    express_rewrites = frozenset({IoringOp.SEND})
    """Rewrites SEND SQEs only: the dispatcher's express lane leaves sends to the backend's submit."""

    name = "send-zc"

    def __init__(self, min_size: int = 0) -> None:
        self.min_size = min_size
        self._pending: dict[int, int | None] = {}
        self.zc_sends = 0

    def after_setup(self, backend: Any) -> None:
        """Check the opcode exists and watch the completions."""
        if IoringOp.SEND_ZC not in backend.probe_opcodes():
            raise OSError(95, "send-zc needs IORING_OP_SEND_ZC (Linux 6.0 or later)")
        backend.add_completion_filter(self.filter)

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """SEND of at least ``min_size`` bytes -> SEND_ZC."""
        if sqe.opcode == IoringOp.SEND and sqe.len >= self.min_size:
            sqe.opcode = IoringOp.SEND_ZC
            self._pending[user_data] = None
            self.zc_sends += 1
        return sqe

    def filter(self, c: IoCompletion) -> IoCompletion | None:
        """Merge a SEND_ZC's result CQE and notification CQE into one completion."""
        if c.user_data not in self._pending:
            return c
        if c.flags & CqeFlag.NOTIF:
            result = self._pending.pop(c.user_data)
            return IoCompletion(c.user_data, result if result is not None else c.result, 0)
        if c.flags & CqeFlag.MORE:
            self._pending[c.user_data] = c.result  # the notification follows
            return None
        self._pending.pop(c.user_data, None)  # failed before any data was queued: no notification
        return c
