"""MmapSharedPage: Tier 0 answers read straight from the channel's shared page."""

from __future__ import annotations

import struct

from ksvc_host.abi import layout as L
from ksvc_host.channel.base import Channel


def _reader(name: str) -> property:
    field = L.SHARED_PAGE_FIELDS[name]
    unpack = struct.Struct(field.fmt).unpack_from
    offset = field.offset

    def get(self: MmapSharedPage) -> int:
        return int(unpack(self._page, offset)[0])

    return property(get, doc=f"``{name}`` from the shared page (offset {offset:#x}).")


class MmapSharedPage:
    """Every read is a load from the mapped page: always current, never a syscall."""

    name = "mmap"

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._page = channel.page
        magic = struct.unpack_from("<I", self._page, 0)[0]
        if magic != L.SHARED_PAGE_MAGIC:
            raise ValueError(f"shared page magic is {magic:#x}, expected {L.SHARED_PAGE_MAGIC:#x}")

    pid = _reader("pid")
    tgid = _reader("tgid")
    ppid = _reader("ppid")
    pgid = _reader("pgid")
    sid = _reader("sid")
    uid = _reader("uid")
    gid = _reader("gid")
    euid = _reader("euid")
    egid = _reader("egid")
    rlimit_nofile = _reader("rlimit_nofile")
    clock_monotonic_ns = _reader("clock_monotonic_ns")
    entries_processed = _reader("entries_processed")
    kthread_cpu = _reader("kthread_cpu")
    worker_state = _reader("worker_state")

    def field(self, name: str) -> int | bytes:
        """Any ABI field by name; text fields come back as bytes without padding."""
        if name not in L.SHARED_PAGE_FIELDS:
            raise KeyError(f"no shared-page field {name!r}; known: {', '.join(L.SHARED_PAGE_FIELDS)}")
        return self._channel.read_page_field(name)
