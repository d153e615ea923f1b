"""What every channel provides, and how one is chosen."""

from __future__ import annotations

import os
import struct

from ksvc_host import forksafety
from ksvc_host.abi import layout as L
from ksvc_host.channel.ring import Ring

_REGION_SIZE = L.MMAP_SHARED_PAGE + L.PAGE_SIZE


class Channel:
    """Two rings and a shared page laid out at the ABI's mmap offsets.

    Subclasses provide the memory: an emulated channel maps a memfd, the
    device channel maps ``/dev/ksvc``. ``page`` is writable only where the
    host itself maintains the page (emulation).

    The mapping is not inherited by a forked child (see
    :mod:`ksvc_host.forksafety`): there the channel is closed, and its rings'
    and page's views are released, so any use raises instead of faulting.
    """

    kind: str = "abstract"

    def __init__(
        self, region: forksafety.SharedMapping, submit_entries: int, complete_entries: int, *, initialize: bool
    ) -> None:
        self._region = region
        self.closed = False
        self.submit_ring = Ring(
            region.view(L.MMAP_SUBMIT_RING, L.MMAP_COMPLETION_RING),
            submit_entries,
            L.SUBMIT_ENTRY_SIZE,
            initialize=initialize,
        )
        self.completion_ring = Ring(
            region.view(L.MMAP_COMPLETION_RING, L.MMAP_SHARED_PAGE),
            complete_entries,
            L.COMPLETION_ENTRY_SIZE,
            initialize=initialize,
        )
        self.page = region.view(L.MMAP_SHARED_PAGE, L.MMAP_SHARED_PAGE + L.PAGE_SIZE)
        forksafety.register(self)

    @property
    def writable_page(self) -> bool:
        """True when the host maintains the shared page itself."""
        return False

    def write_page_field(self, name: str, value: int | bytes) -> None:
        """Store one shared-page field (emulation only)."""
        field = L.SHARED_PAGE_FIELDS[name]
        struct.pack_into(field.fmt, self.page, field.offset, value)

    def read_page_field(self, name: str) -> int | bytes:
        """Load one shared-page field."""
        field = L.SHARED_PAGE_FIELDS[name]
        value = struct.unpack_from(field.fmt, self.page, field.offset)[0]
        return value.rstrip(b"\0") if isinstance(value, bytes) else int(value)

    def refresh_identity(self) -> None:
        """Bring the page's process ids and limits up to date (the emulation's job)."""

    def refresh_clocks(self) -> None:
        """Bring the page's clocks up to date (the emulation's job)."""

    def close(self) -> None:
        """Unmap the channel. Idempotent."""
        if self.closed:
            return
        self.closed = True
        forksafety.unregister(self)
        self._region.close()  # releases the rings' and the page's views first

    def drop_after_fork(self) -> None:
        """In a forked child: the memory is not mapped here (the mapping releases the views); stay closed."""
        self.closed = True


def open_channel(submit_entries: int = 256, complete_entries: int = 512, *, device: str | None = None) -> Channel:
    """Open the device channel when it exists, else an emulated one.

    *device* overrides the device path (``""`` forces emulation).
    """
    L.check_ring_entries(submit_entries, "submit_ring_entries")
    L.check_ring_entries(complete_entries, "complete_ring_entries")
    path = L.DEVICE_PATH if device is None else device
    if path and os.path.exists(path):
        from ksvc_host.channel.device import DeviceChannel

        return DeviceChannel(path, submit_entries, complete_entries)
    from ksvc_host.channel.emulated import EmulatedChannel

    return EmulatedChannel(submit_entries, complete_entries)


REGION_SIZE = _REGION_SIZE
"""Bytes from the first ring to the end of the shared page."""
