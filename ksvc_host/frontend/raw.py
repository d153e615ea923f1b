"""The raw entry interface: submit ABI entries, collect ABI completions.

Unsafe by design: arguments are machine words and pointers are the
caller's responsibility (a bad pointer gives ``EFAULT`` from the kernel,
but memory freed while the kernel uses it is the caller's bug). This is
the surface another runtime (a green-thread scheduler, say) plugs into.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ksvc_host.abi import layout as L
from ksvc_host.frontend.core import Waiter
from ksvc_host.frontend.operations import syscall_number, word

if TYPE_CHECKING:
    from ksvc_host.frontend.core import Completer
    from ksvc_host.instance import Instance


class RawChannel:
    """Submit raw entries; read their completions in arrival order."""

    def __init__(self, instance: Instance, completer: Completer, lanes: Any = None) -> None:
        self._instance = instance
        self._completer = completer
        self._lanes = lanes
        self._done: deque[L.CompletionEntry] = deque()

    def submit(self, entries: Sequence[tuple[int, Sequence[int], int]]) -> list[int]:
        """Submit ``(syscall_nr, args, flags)`` entries; return their correlation ids.

        All or nothing: raises :class:`ksvc_host.errors.ChannelFull` (EAGAIN)
        when the submit ring lacks room for all of them.
        """
        norm = []
        for nr, args, flags in entries:
            if len(args) > 6:
                raise ValueError(f"an entry has at most 6 arguments, got {len(args)}")
            f = operator.index(flags)
            if f & ~L.SUBMIT_FLAGS_VALID or f < 0:
                valid = L.SUBMIT_FLAGS_VALID
                raise ValueError(f"entry flags {f:#x} carry bits KSVC does not define (valid: {valid:#x})")
            norm.append((syscall_number(nr), tuple(word(a) for a in args) + (0,) * (6 - len(args)), f))
        waiters = [Waiter(callback=self._on_completion) for _ in norm]
        self._completer.submit_raw(norm, waiters)
        return [w.corr_id for w in waiters]

    def _on_completion(self, corr_id: int, result: int, flags: int) -> None:
        self._done.append(L.CompletionEntry(corr_id, result, flags & L.COMPLETION_FLAG_MORE if flags > 0 else 0))

    def completions(self, wait_for: int = 0) -> list[L.CompletionEntry]:
        """Completions that arrived; block until at least *wait_for* are available."""
        c = self._completer
        c.reap()
        if len(self._done) < wait_for:
            c.wait_until(lambda: len(self._done) >= wait_for or c.failure is not None)
        out = list(self._done)
        self._done.clear()
        return out

    def pending(self) -> int:
        """Entries submitted whose final completion has not been read: on the shared ring and in threads' lanes."""
        return self._completer.pending_count() + (self._lanes.inflight() if self._lanes is not None else 0)
