"""HeapBuffers: fresh memory for every operation, no pinning."""

from __future__ import annotations

from ksvc_host import native
from ksvc_host.traits.buffer_provider import BufferHandle


class HeapBuffers:
    """A new buffer per ``acquire``; freed when released and unreferenced."""

    name = "heap"
    is_registered = False

    def __init__(self, *, max_size: int = 64 << 20) -> None:
        self.max_size = max_size
        self._live: set[int] = set()

    def acquire(self, min_size: int) -> BufferHandle | None:
        """Memory of *min_size* bytes, or ``None`` above ``max_size``."""
        if min_size < 0 or min_size > self.max_size:
            return None
        mem = native.alloc(min_size)
        handle = BufferHandle(native.address_of(mem), min_size, -1, mem)
        self._live.add(id(handle))
        return handle

    def release(self, handle: BufferHandle) -> None:
        """Give *handle* back; releasing twice is an error."""
        try:
            self._live.remove(id(handle))
        except KeyError:
            raise ValueError(
                f"buffer at {handle.address:#x} was already released (or not from this provider)"
            ) from None

    @property
    def pool_size(self) -> int:
        """0: the heap is not a pool."""
        return 0

    @property
    def in_use(self) -> int:
        """Handles not yet released."""
        return len(self._live)
