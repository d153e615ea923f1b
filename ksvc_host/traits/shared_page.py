"""SharedPage: identity and statistics read without a system call (Tier 0)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SharedPage(Protocol):
    """Reads the 4 KiB shared page of the channel.

    Contract: every identity field equals what the direct syscall returns
    in the calling process (``pid == os.getpid()``, ``uid == os.getuid()``,
    ...), also after ``fork()`` and after credential changes; statistics
    fields are those the dispatcher last published.
    """

    name: str

    pid: int
    tgid: int
    ppid: int
    pgid: int
    sid: int
    uid: int
    gid: int
    euid: int
    egid: int
    rlimit_nofile: int
    clock_monotonic_ns: int
    entries_processed: int
    kthread_cpu: int
    worker_state: int

    def field(self, name: str) -> int | bytes:
        """Any field of the ABI by name (see :data:`ksvc_host.abi.layout.SHARED_PAGE_FIELDS`)."""
        ...
