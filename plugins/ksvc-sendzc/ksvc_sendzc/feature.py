"""The ``send-zc`` feature: sends as IORING_OP_SEND_ZC where zero copy applies.

A zero-copy send completes twice: first with the byte count (flagged
MORE), then with a notification (flagged NOTIF) once the kernel no longer
needs the buffer. The feature swallows the first CQE, keeps its result,
and hands the result on with the notification, so the caller gets one
completion, and its buffer stays referenced until the kernel is done.

Zero copy applies only to sockets the kernel marks for it (TCP and UDP
over IPv4 and IPv6); on any other descriptor (AF_UNIX, a pipe) SEND_ZC
fails with EOPNOTSUPP where ``send(2)`` works. So:

* a send stays a plain SEND unless its socket is AF_INET/AF_INET6 with
  TCP or UDP (two ``getsockopt`` calls the first time a descriptor is
  seen; the answer is kept until KSVC closes the descriptor);
* a SEND_ZC that still fails with EOPNOTSUPP (a descriptor replaced
  behind KSVC's back, a socket with a ULP such as kTLS, a fixed-file slot
  whose descriptor is unknown) is sent again as a plain SEND under the
  same ``user_data``, and its descriptor is remembered as not eligible.

Either way the caller sees what ``send(2)`` would have returned. Sends
smaller than ``min_size`` stay ordinary sends (zero copy does not pay for
them).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from ksvc_host import native
from ksvc_host.abi.io_uring import CqeFlag, IoringOp, SqeFlag
from ksvc_host.traits.capabilities import ExpressRewrites, FixedFilesIoBackend, FixedFileTable
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec

_NR_GETSOCKOPT = 55
_ZC_DOMAINS = frozenset({socket.AF_INET, socket.AF_INET6})
_ZC_PROTOCOLS = frozenset({socket.IPPROTO_TCP, socket.IPPROTO_UDP})
_EOPNOTSUPP = -errno.EOPNOTSUPP


def _copy(sqe: SqeSpec) -> SqeSpec:
    """A field-by-field copy of *sqe* (later preparers may change the original in place)."""
    out = SqeSpec(sqe.opcode)
    for name in SqeSpec.__slots__:
        setattr(out, name, getattr(sqe, name))
    return out


class SendZeroCopy:
    """Feature ``send-zc``."""

    express_rewrites = ExpressRewrites(opcodes=frozenset({int(IoringOp.SEND)}))
    """Rewrites SEND SQEs only: the dispatcher's express lane leaves sends to the backend's submit.
    (It also watches CLOSE, which the lane never takes.)"""

    name = "send-zc"

    def __init__(self, min_size: int = 0) -> None:
        self.min_size = min_size
        self._pending: dict[int, int | None] = {}
        """user_data of a SEND_ZC in flight -> the result of its first CQE (None until it arrives)."""
        self._plain_sqe: dict[int, SqeSpec] = {}
        """user_data of a SEND_ZC in flight -> the same send as a plain SEND, for the fallback."""
        self._resend: set[int] = set()
        """user_data being sent again as plain SEND: :meth:`prepare` leaves it alone."""
        self._eligible: dict[int, bool] = {}
        """Descriptor -> whether its socket supports zero copy (forgotten when KSVC closes it)."""
        self._backend: Any = None
        self._fixed_files: FixedFileTable | None = None
        self._fixed_files_known = False
        """Whether ``_fixed_files`` was looked up (at the first fixed-file SQE: the backend is complete by then)."""
        self._query = native.alloc(8)
        self._query_addr = native.address_of(self._query)
        self._int = native.ffi.cast("int *", self._query)
        self._len = native.ffi.cast("unsigned int *", self._query) + 1
        self.zc_sends = 0
        """Sends that went out as SEND_ZC and completed as such."""
        self.plain_sends = 0
        """Sends left as plain SEND because their descriptor does not support zero copy."""
        self.fallbacks = 0
        """SEND_ZCs that failed with EOPNOTSUPP and were sent again as plain SEND."""

    def after_setup(self, backend: Any) -> None:
        """Check the opcode exists and watch the completions."""
        if IoringOp.SEND_ZC not in backend.probe_opcodes():
            raise OSError(95, "send-zc needs IORING_OP_SEND_ZC (Linux 6.0 or later)")
        self._backend = backend
        # Filters only the CQEs of its own SEND_ZC requests: other completions may bypass it.
        backend.add_completion_filter(self.filter, own_requests_only=True)

    # Submitting --------------------------------------------------------------------

    def prepare(self, user_data: int, sqe: SqeSpec) -> SqeSpec:
        """SEND of at least ``min_size`` bytes on a TCP/UDP socket -> SEND_ZC."""
        if sqe.opcode == IoringOp.CLOSE:
            if not sqe.flags & SqeFlag.FIXED_FILE:
                self._eligible.pop(sqe.fd, None)  # the number may name another file next time
            return sqe
        if sqe.opcode != IoringOp.SEND or sqe.len < self.min_size:
            return sqe
        if user_data in self._resend:
            return sqe  # the fallback's plain SEND (kept until its completion: submit may be retried)
        fd = self._real_fd(sqe)
        if fd is not None and not self._supports_zc(fd):
            self.plain_sends += 1
            return sqe
        self._plain_sqe[user_data] = _copy(sqe)
        sqe.opcode = IoringOp.SEND_ZC
        self._pending[user_data] = None
        return sqe

    def _real_fd(self, sqe: SqeSpec) -> int | None:
        """The descriptor *sqe* names, or ``None`` for a fixed-file slot whose descriptor is unknown."""
        if not sqe.flags & SqeFlag.FIXED_FILE:
            return sqe.fd
        if not self._fixed_files_known:
            backend = self._backend
            self._fixed_files = backend.fixed_files if isinstance(backend, FixedFilesIoBackend) else None
            self._fixed_files_known = True
        fixed = self._fixed_files
        if fixed is not None:
            for fd, slot in fixed.registered().items():
                if slot == sqe.fd:
                    return fd
        return None

    def _supports_zc(self, fd: int) -> bool:
        """Whether *fd* is a TCP or UDP socket over IPv4/IPv6 (asked once per descriptor)."""
        known = self._eligible.get(fd)
        if known is not None:
            return known
        ok = self._sockopt(fd, socket.SO_DOMAIN) in _ZC_DOMAINS and (
            self._sockopt(fd, socket.SO_PROTOCOL) in _ZC_PROTOCOLS
        )
        self._eligible[fd] = ok
        return ok

    def _sockopt(self, fd: int, option: int) -> int:
        """An int socket option of *fd*, or ``-errno`` (ENOTSOCK for a file that is no socket)."""
        self._len[0] = 4
        ret = native.syscall(_NR_GETSOCKOPT, fd, socket.SOL_SOCKET, option, self._query_addr, self._query_addr + 4, 0)
        return ret if ret < 0 else int(self._int[0])

    # Completing --------------------------------------------------------------------

    def filter(self, c: IoCompletion) -> IoCompletion | None:
        """Merge a SEND_ZC's result CQE and notification CQE into one completion; retry EOPNOTSUPP plainly."""
        if c.user_data not in self._pending:
            if self._resend and c.user_data in self._resend:
                self._resend.discard(c.user_data)  # the fallback's plain SEND completed
            return c
        if c.flags & CqeFlag.MORE:
            self._pending[c.user_data] = c.result  # the notification follows
            return None
        if c.flags & CqeFlag.NOTIF:
            first = self._pending.pop(c.user_data)
            result = first if first is not None else c.result
        else:
            self._pending.pop(c.user_data, None)  # failed before any data was queued: no notification
            result = c.result
        plain = self._plain_sqe.pop(c.user_data, None)
        if result == _EOPNOTSUPP and plain is not None and self._resend_plain(c.user_data, plain):
            return None  # the plain SEND completes under the same user_data
        if result >= 0:
            self.zc_sends += 1
        return IoCompletion(c.user_data, result, 0)

    def _resend_plain(self, user_data: int, sqe: SqeSpec) -> bool:
        """Queue *sqe* (a plain SEND) under *user_data* and hand it to the kernel; ``False`` if it cannot be queued."""
        fd = self._real_fd(sqe)
        if fd is not None:
            self._eligible[fd] = False  # no second failed attempt on this descriptor
        backend = self._backend
        self._resend.add(user_data)
        queued = backend.submit(user_data, sqe)
        if not queued:
            backend.flush()  # make room in the SQ, then try once more
            queued = backend.submit(user_data, sqe)
        if not queued:
            self._resend.discard(user_data)
            return False  # the caller gets EOPNOTSUPP rather than a completion that never comes
        backend.flush()  # nobody else knows this SQE is queued
        self.fallbacks += 1
        return True
