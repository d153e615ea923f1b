"""CachedSharedPage: the process ids held in Python attributes; the rest read from the page.

``pid`` and ``tgid`` change only across ``fork()``, so they are cached and
re-read after a fork (``os.register_at_fork``). Credentials and limits can
change at any time (``setuid``, ``setrlimit``), so they are never cached:
they are read from the page like ``mmap`` does, which keeps them exactly as
current as the page itself.
"""

from __future__ import annotations

import os
import weakref

from ksvc_basic.mmap_shared_page import MmapSharedPage
from ksvc_host.channel.base import Channel

_LIVE: weakref.WeakSet[CachedSharedPage] = weakref.WeakSet()


class CachedSharedPage(MmapSharedPage):
    """Shared page ``cached``: ``pid``/``tgid`` are plain attribute reads."""

    name = "cached"

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        self._load()
        _LIVE.add(self)

    # Plain attributes, shadowing the page readers: a read is one dictionary lookup.
    pid: int = 0
    tgid: int = 0

    def _load(self) -> None:
        self.pid = int(self.field("pid"))
        self.tgid = int(self.field("tgid"))

    def _after_fork(self) -> None:
        # The inherited page still holds the parent's ids; the child's are its own.
        self.pid = self.tgid = os.getpid()


def _renew_after_fork() -> None:
    for page in list(_LIVE):
        page._after_fork()


os.register_at_fork(after_in_child=_renew_after_fork)
