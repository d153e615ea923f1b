"""BufferProvider: memory handed to the kernel for an operation."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class BufferHandle:
    """A buffer lent to one operation.

    ``address`` is valid until :meth:`BufferProvider.release`; ``index`` is
    the registered-buffer index for READ_FIXED/WRITE_FIXED, or -1.
    """

    __slots__ = ("address", "size", "index", "owner")

    def __init__(self, address: int, size: int, index: int, owner: Any) -> None:
        self.address = address
        self.size = size
        self.index = index
        self.owner = owner
        """Keeps the memory alive while the handle is."""

    def view(self, length: int | None = None) -> memoryview:
        """A writable view of the first *length* bytes (all by default)."""
        from ksvc_host.native import ffi

        n = self.size if length is None else length
        return memoryview(ffi.buffer(ffi.cast("char *", self.address), n))


@runtime_checkable
class BufferProvider(Protocol):
    """Hands out buffers of at least a given size.

    Contract: ``acquire`` never blocks and returns ``None`` when it cannot
    serve the size (the caller falls back to its own memory); a handle's
    memory stays valid and unshared until ``release``; ``in_use`` counts
    handles not yet released.
    """

    name: str
    is_registered: bool
    """True when buffers are registered with io_uring (usable with *_FIXED opcodes)."""

    def acquire(self, min_size: int) -> BufferHandle | None:
        """A buffer of at least *min_size* bytes, or ``None``."""
        ...

    def release(self, handle: BufferHandle) -> None:
        """Return *handle*'s buffer."""
        ...

    @property
    def pool_size(self) -> int:
        """Buffers owned (0 for an unbounded heap provider)."""
        ...

    @property
    def in_use(self) -> int:
        """Handles acquired and not released."""
        ...
