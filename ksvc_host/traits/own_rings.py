"""OwnRings: an io backend that lets each submitting thread have an io_uring of its own.

A capability of :class:`~ksvc_host.traits.IoBackend`, resolved once when a
front end is built. Where the backend offers it, the front end gives each
calling thread a *lane* (:mod:`ksvc_host.lanes`): a channel and an io_uring
that only that thread submits to, so ordinary calls are made on the
caller's thread with no hand-over to the dispatcher (docs/design.md §12).
The backend owns the policy (which setup flags, which opcodes); the host
owns the mechanism.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class OwnRingSpec(NamedTuple):
    """How to build a thread's own io_uring."""

    setup_flags: int
    """io_uring setup flags to ask for; the lane drops those the kernel lacks (newest first)."""
    opcodes: frozenset[int]
    """Opcodes the lane may use (those the kernel supports)."""
    entries: int = 64
    """SQ entries of each ring."""


@runtime_checkable
class OwnRings(Protocol):
    """An io backend whose operations may also run on per-thread rings (``None``: not now)."""

    def own_ring_spec(self) -> OwnRingSpec | None:
        """The spec of a thread's own ring, or ``None`` when operations must go through the shared ring."""
        ...
