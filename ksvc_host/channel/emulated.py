"""The emulated ``/dev/ksvc``: the same layout in a memfd the host maintains.

The kernel of this kind of machine cannot load the KSVC module, so the host
plays its part: it creates the rings, fills the shared page and keeps its
statistics current. Everything above the channel is the same code either way.
"""

from __future__ import annotations

import mmap
import os
import resource
import time

from ksvc_host.abi import layout as L
from ksvc_host.channel.base import REGION_SIZE, Channel


class EmulatedChannel(Channel):
    """Rings and shared page in one anonymous shared-memory file."""

    kind = "emulated"

    def __init__(self, submit_entries: int, complete_entries: int) -> None:
        fd = os.memfd_create("ksvc-channel", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, REGION_SIZE)
            region = mmap.mmap(fd, REGION_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
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
