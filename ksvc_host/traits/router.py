"""SyscallRouter: which tier serves a syscall number."""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol, runtime_checkable


class Tier(enum.IntEnum):
    """Where a syscall is served."""

    SHARED_PAGE = 0
    """Answered from the shared page without a system call."""
    IO_URING = 1
    """Turned into an io_uring SQE; blocking happens in the kernel."""
    WORKER = 2
    """Run as a plain ``syscall()`` on a worker thread."""
    LEGACY = 3
    """Not offloaded: refused through the channel (process-altering or unknown)."""


class Route(NamedTuple):
    """The routing decision for one syscall number."""

    tier: Tier
    opcode: int | None = None
    """io_uring opcode for Tier 1, else ``None``."""


@runtime_checkable
class SyscallRouter(Protocol):
    """Maps a syscall number to a :class:`Route`.

    Contract: ``route`` is O(1) (a table built once, at construction) and
    total: every integer gets a route, unknown numbers :attr:`Tier.LEGACY`.
    ``supported_opcodes`` is the opcode set the table was built from.
    """

    name: str
    supported_opcodes: frozenset[int]

    def route(self, nr: int) -> Route:
        """Return the route for syscall *nr*."""
        ...

    def table(self) -> dict[int, Route]:
        """Every known syscall number with its route."""
        ...
