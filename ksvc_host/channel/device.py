"""The channel of the KSVC kernel module: ``ioctl(KSVC_IOC_CREATE)`` and three mmaps."""

from __future__ import annotations

import fcntl
import os

from ksvc_host import forksafety
from ksvc_host.abi import layout as L
from ksvc_host.channel.base import REGION_SIZE, Channel


class DeviceChannel(Channel):
    """Rings and shared page provided by ``/dev/ksvc``; the kernel maintains the page."""

    kind = "device"

    def __init__(self, path: str, submit_entries: int, complete_entries: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            params = bytearray(L.CREATE_PARAMS.pack(submit_entries, complete_entries, 0, -1, 0, 0, 0, 0))
            fcntl.ioctl(fd, L.KSVC_IOC_CREATE, params, True)
            # One mapping covering all three regions keeps the offsets identical to emulation;
            # MADV_DONTFORK on it: a forked child must not reach this instance's rings.
            region = forksafety.SharedMapping(REGION_SIZE, fd)
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"cannot create a KSVC instance on {path}: {exc.strerror}") from exc
        self._fd = fd
        # The descriptor would let a child map the rings again: closed in every forked child.
        self._fd_guard = forksafety.close_in_child(fd)
        try:
            super().__init__(region, submit_entries, complete_entries, initialize=False)
        except BaseException:
            region.close()
            self._fd_guard.release()
            os.close(fd)
            raise

    def refresh_identity(self) -> None:
        """The kernel keeps identity current; nothing to do."""

    def refresh_clocks(self) -> None:
        """The kernel keeps clocks current; nothing to do."""

    def close(self) -> None:
        """Unmap and close the device."""
        if not self.closed:
            super().close()
            self._fd_guard.release()
            os.close(self._fd)

    def drop_after_fork(self) -> None:
        """In a forked child: the guard closed the descriptor; never close that number again."""
        super().drop_after_fork()
        self._fd = -1
