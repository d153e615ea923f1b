"""Tier 0 for both front ends: answers read from the shared page, no syscall and no await.

Freshness (docs/design.md §4): the process ids never change for an
instance (a forked child opens its own); credentials, limits and the host
name are rewritten by the emulated channel with every dispatcher batch and
at most 50 ms apart, and at once by :meth:`SharedPageReads.refresh`; the
clocks are those of the dispatcher's last batch (or of ``refresh``), so
they lag the real clock by up to one batch and are for coarse time only.
"""

from __future__ import annotations

import os
import resource
import struct
from typing import TYPE_CHECKING

from ksvc_host.abi import layout as L
from ksvc_host.abi import linux as lx

if TYPE_CHECKING:
    from ksvc_host.instance import Instance
    from ksvc_host.traits import SharedPage


def _span(*names: str) -> slice:
    """The bytes of the shared page that hold the consecutive fields *names*."""
    fields = [L.SHARED_PAGE_FIELDS[n] for n in names]
    start = fields[0].offset
    end = fields[-1].offset + struct.calcsize(fields[-1].fmt)
    assert end - start == sum(struct.calcsize(f.fmt) for f in fields), "uname fields must be consecutive"
    return slice(start, end)


_UTS_A = _span("release", "nodename", "machine")
_UTS_B = _span("uts_sysname", "uts_version")
_PAGE_LIMITS = {resource.RLIMIT_NOFILE: "rlimit_nofile", resource.RLIMIT_NPROC: "rlimit_nproc"}


class SharedPageReads:
    """The Tier 0 helpers; the front end provides ``instance`` and ``_page``."""

    instance: Instance
    _page: SharedPage
    _uname_raw: bytes = b""
    _uname: os.uname_result | None = None

    def getpid(self) -> int:
        """Process id, from the shared page."""
        self.instance.check_usable()
        return self._page.pid

    def getppid(self) -> int:
        """Parent process id, from the shared page."""
        self.instance.check_usable()
        return self._page.ppid

    def getuid(self) -> int:
        """Real user id, from the shared page."""
        self.instance.check_usable()
        return self._page.uid

    def geteuid(self) -> int:
        """Effective user id, from the shared page."""
        self.instance.check_usable()
        return self._page.euid

    def getgid(self) -> int:
        """Real group id, from the shared page."""
        self.instance.check_usable()
        return self._page.gid

    def getegid(self) -> int:
        """Effective group id, from the shared page."""
        self.instance.check_usable()
        return self._page.egid

    def getpgrp(self) -> int:
        """Process group id, from the shared page."""
        self.instance.check_usable()
        return self._page.pgid

    def getsid(self) -> int:
        """Session id of this process, from the shared page."""
        self.instance.check_usable()
        return self._page.sid

    def uname(self) -> os.uname_result:
        """System name, host name, release, version and machine, from the shared page (like ``os.uname``).

        The result is built again only when the page's bytes for it changed
        (a new host name): profiled, decoding five fields cost 8x ``os.uname()``.
        """
        self.instance.check_usable()
        page = self.instance.channel.page
        raw = bytes(page[_UTS_A]) + bytes(page[_UTS_B])
        if raw != self._uname_raw:
            field = self.instance.channel.read_page_field
            self._uname = os.uname_result(
                tuple(bytes(field(n)).decode(errors="surrogateescape")
                      for n in ("uts_sysname", "nodename", "release", "uts_version", "machine"))  # fmt: skip
            )
            self._uname_raw = raw
        assert self._uname is not None
        return self._uname

    def refresh(self) -> None:
        """Re-read ids, credentials and limits into the shared page now.

        The emulated channel refreshes them with every dispatcher batch and
        at most 50 ms apart; call this after changing credentials or limits
        to see the change in Tier 0 answers at once. (The kernel module
        keeps the page current by itself.)
        """
        self.instance.check_usable()
        self.instance.channel.refresh_identity()
        self.instance.channel.refresh_clocks()

    def getrlimit_soft(self, which: int) -> int:
        """The soft limit ``resource.getrlimit(which)[0]`` for RLIMIT_NOFILE or RLIMIT_NPROC, from the page.

        ``resource.RLIM_INFINITY`` when unlimited. Other limits are not on
        the page: ask ``resource.getrlimit``.
        """
        self.instance.check_usable()
        field = _PAGE_LIMITS.get(which)
        if field is None:
            raise ValueError(f"limit {which} is not on the shared page (only RLIMIT_NOFILE and RLIMIT_NPROC are)")
        value = int(self.instance.channel.read_page_field(field))
        return resource.RLIM_INFINITY if value == lx.U64_MASK else value

    def clock_monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC in ns as of the dispatcher's last batch (coarse: see the module doc)."""
        self.instance.check_usable()
        return int(self.instance.channel.read_page_field("clock_monotonic_ns"))

    def clock_realtime_ns(self) -> int:
        """CLOCK_REALTIME in ns as of the dispatcher's last batch (coarse: see the module doc)."""
        self.instance.check_usable()
        return int(self.instance.channel.read_page_field("clock_realtime_ns"))
