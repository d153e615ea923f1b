"""The emulated ``/dev/ksvc``: the same layout in a memfd the host maintains.

The kernel of this kind of machine cannot load the KSVC module, so the host
plays its part: it creates the rings, fills the shared page and keeps its
statistics current. Everything above the channel is the same code either way.

The memfd is private to the process that made it: mode 0600, sealed
against resizing and against any new writable mapping or write, closed
right after the one mapping is made (nothing else needs it), and that
mapping is not inherited across ``fork()``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import time
from typing import Final

from ksvc_host import forksafety
from ksvc_host.abi import layout as L
from ksvc_host.channel.base import REGION_SIZE, Channel

MFD_NOEXEC_SEAL: Final = 0x0008
"""memfd_create: not executable, and sealed so (Linux 6.3)."""
F_SEAL_FUTURE_WRITE: Final = 0x0010
"""No new writable mapping and no write(2); the mapping that exists keeps working (Linux 5.1)."""
F_SEAL_EXEC: Final = 0x0020
"""The mode's exec bits cannot change (Linux 6.3)."""
_MEMFD_MODE: Final = 0o600


def _private_memfd(name: str) -> int:
    """A memfd only its creator can open: mode 0600, sealable, never executable where the kernel can say so."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(name, flags | MFD_NOEXEC_SEAL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.memfd_create(name, flags)  # before 6.3
    try:
        os.fchmod(fd, _MEMFD_MODE)  # memfds start at 0777
        os.ftruncate(fd, REGION_SIZE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _seal(fd: int) -> None:
    """Seal size and contents against everyone but the mapping that exists; then the seals themselves."""
    base = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    # Newest first: each step drops a seal this kernel may not know (EINVAL); the last must succeed.
    for seals in (base | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC, base | F_SEAL_FUTURE_WRITE):
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, base)


class EmulatedChannel(Channel):
    """Rings and shared page in one anonymous shared-memory file."""

    kind = "emulated"

    def __init__(self, submit_entries: int, complete_entries: int) -> None:
        fd = _private_memfd("ksvc-channel")
        try:
            region = forksafety.SharedMapping(REGION_SIZE, fd)
            try:
                _seal(fd)
            except BaseException:
                region.close()
                raise
        finally:
            os.close(fd)  # the mapping holds the memory; no descriptor is left to reopen or inherit
        super().__init__(region, submit_entries, complete_entries, initialize=True)
        self.write_page_field("magic", L.SHARED_PAGE_MAGIC)
        self.write_page_field("version", L.ABI_VERSION)
        uts = os.uname()
        self.write_page_field("release", uts.release.encode()[: L.UTS_LEN - 1])
        self.write_page_field("nodename", uts.nodename.encode()[: L.UTS_LEN - 1])
        self.write_page_field("machine", uts.machine.encode()[: L.UTS_LEN - 1])
        self.write_page_field("uts_sysname", uts.sysname.encode()[: L.UTS_LEN - 1])
        self.write_page_field("uts_version", uts.version.encode()[: L.UTS_LEN - 1])
        self.write_page_field("boot_time_ns", time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        self.refresh_identity()
        self.refresh_clocks()

    @property
    def writable_page(self) -> bool:
        """The host maintains this page."""
        return True

    def refresh_identity(self) -> None:
        """Write the calling process's ids and limits into the page."""
        w = self.write_page_field
        pid = os.getpid()
        w("pid", pid)
        w("tgid", pid)
        w("ppid", os.getppid())
        w("pgid", os.getpgrp())
        w("sid", os.getsid(0))
        ruid, euid, suid = os.getresuid()
        rgid, egid, sgid = os.getresgid()
        w("uid", ruid)
        w("euid", euid)
        w("suid", suid)
        w("gid", rgid)
        w("egid", egid)
        w("sgid", sgid)
        w("rlimit_nofile", _limit(resource.RLIMIT_NOFILE))
        w("rlimit_nproc", _limit(resource.RLIMIT_NPROC))

    def refresh_clocks(self) -> None:
        """Write the current clocks into the page."""
        self.write_page_field("clock_monotonic_ns", time.monotonic_ns())
        self.write_page_field("clock_realtime_ns", time.time_ns())


def _limit(which: int) -> int:
    soft = resource.getrlimit(which)[0]
    return 0xFFFF_FFFF_FFFF_FFFF if soft == resource.RLIM_INFINITY else soft
