"""The routing policy: which syscalls go to which tier, given the kernel's opcodes.

Routers (``probe``, ``static``) differ only in where the supported opcode
set comes from; both build their table with :func:`build_table`, once.

- Tier 0: identity reads answered from the shared page.
- Tier 1: a syscall with an io_uring opcode the kernel supports.
- Tier 2: a delegatable syscall without one; runs on a worker thread.
- Tier 3: everything else. Of those, :data:`REFUSED` (process-altering or
  thread-bound calls) are refused with ``EPERM`` on every path; the rest
  are simply not offloaded (``ENOSYS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ksvc_host.abi.io_uring import IoringOp
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.traits.router import Route, SyscallRouter, Tier

TIER0_NAMES: Final = frozenset(
    {"getpid", "getppid", "getuid", "getgid", "geteuid", "getegid", "getsid", "getpgrp", "uname", "getrlimit"}
)

#: syscall name -> io_uring opcode that can serve it (old forms map to their *at opcode).
OPCODE_FOR: Final[Mapping[str, IoringOp]] = MappingProxyType(
    {
        "read": IoringOp.READ,
        "write": IoringOp.WRITE,
        "pread64": IoringOp.READ,
        "pwrite64": IoringOp.WRITE,
        "readv": IoringOp.READV,
        "writev": IoringOp.WRITEV,
        "preadv": IoringOp.READV,
        "pwritev": IoringOp.WRITEV,
        "preadv2": IoringOp.READV,
        "pwritev2": IoringOp.WRITEV,
        "open": IoringOp.OPENAT,
        "creat": IoringOp.OPENAT,
        "openat": IoringOp.OPENAT,
        "openat2": IoringOp.OPENAT2,
        "close": IoringOp.CLOSE,
        "statx": IoringOp.STATX,
        "stat": IoringOp.STATX,
        "lstat": IoringOp.STATX,
        "fstat": IoringOp.STATX,
        "newfstatat": IoringOp.STATX,
        "fsync": IoringOp.FSYNC,
        "fdatasync": IoringOp.FSYNC,
        "sync_file_range": IoringOp.SYNC_FILE_RANGE,
        "fallocate": IoringOp.FALLOCATE,
        "ftruncate": IoringOp.FTRUNCATE,
        "rename": IoringOp.RENAMEAT,
        "renameat": IoringOp.RENAMEAT,
        "renameat2": IoringOp.RENAMEAT,
        "unlink": IoringOp.UNLINKAT,
        "rmdir": IoringOp.UNLINKAT,
        "unlinkat": IoringOp.UNLINKAT,
        "mkdir": IoringOp.MKDIRAT,
        "mkdirat": IoringOp.MKDIRAT,
        "symlink": IoringOp.SYMLINKAT,
        "symlinkat": IoringOp.SYMLINKAT,
        "link": IoringOp.LINKAT,
        "linkat": IoringOp.LINKAT,
        "fadvise64": IoringOp.FADVISE,
        "madvise": IoringOp.MADVISE,
        "setxattr": IoringOp.SETXATTR,
        "getxattr": IoringOp.GETXATTR,
        "fsetxattr": IoringOp.FSETXATTR,
        "fgetxattr": IoringOp.FGETXATTR,
        "socket": IoringOp.SOCKET,
        "bind": IoringOp.BIND,
        "listen": IoringOp.LISTEN,
        "accept": IoringOp.ACCEPT,
        "accept4": IoringOp.ACCEPT,
        "connect": IoringOp.CONNECT,
        "sendto": IoringOp.SEND,
        "recvfrom": IoringOp.RECV,
        "sendmsg": IoringOp.SENDMSG,
        "recvmsg": IoringOp.RECVMSG,
        "shutdown": IoringOp.SHUTDOWN,
        "splice": IoringOp.SPLICE,
        "tee": IoringOp.TEE,
        "pipe": IoringOp.PIPE,
        "pipe2": IoringOp.PIPE,
        "epoll_ctl": IoringOp.EPOLL_CTL,
        "waitid": IoringOp.WAITID,
    }
)

#: Delegatable without an opcode (or when the kernel lacks it): plain syscall() on a worker.
WORKER_NAMES: Final = frozenset(OPCODE_FOR) | frozenset(
    {
        "dup", "dup2", "dup3", "fcntl", "ioctl", "lseek", "setsockopt", "getsockopt", "getsockname",
        "getpeername", "getdents64", "getdents", "access", "faccessat", "faccessat2", "chmod", "fchmod",
        "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utimensat", "utimes", "utime",
        "futimesat", "flock", "readlink", "readlinkat", "getcwd", "getrandom", "truncate", "statfs",
        "fstatfs", "sync", "syncfs", "close_range", "lsetxattr", "lgetxattr", "listxattr", "llistxattr",
        "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "socketpair", "sendmmsg",
        "recvmmsg", "epoll_create1", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
        "select", "pselect6", "wait4", "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday",
        "time", "sendfile", "copy_file_range", "memfd_create", "eventfd2", "timerfd_create",
        "timerfd_settime", "timerfd_gettime", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        "mknod", "mknodat", "sysinfo", "getrusage", "vmsplice", "kill", "name_to_handle_at",
        "open_by_handle_at", "chdir", "fchdir", "statmount", "listmount", "cachestat", "futex",
        "msync", "mincore", "mlock", "munlock", "readahead", "getxattrat", "setxattrat", "listxattrat",
        "removexattrat", "file_getattr", "file_setattr",
    }
)  # fmt: skip

#: Never executed through KSVC: they alter the process, its address space, its
#: credentials or the calling thread, which on a worker would be the wrong one.
REFUSED_NAMES: Final = frozenset(
    {
        "fork", "vfork", "clone", "clone3", "execve", "execveat", "exit", "exit_group",
        "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "rt_sigsuspend", "rt_sigtimedwait",
        "sigaltstack", "pause", "restart_syscall", "set_tid_address", "set_robust_list",
        "get_robust_list", "rseq", "arch_prctl", "prctl", "ptrace", "unshare", "setns", "seccomp",
        "personality", "brk", "mmap", "munmap", "mremap", "mprotect", "pkey_mprotect", "modify_ldt",
        "map_shadow_stack", "mseal", "setuid", "setgid", "setreuid", "setregid", "setresuid",
        "setresgid", "setfsuid", "setfsgid", "setgroups", "capset", "chroot", "pivot_root",
        "kexec_load", "kexec_file_load", "reboot", "vhangup", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "set_thread_area", "get_thread_area",
        "uretprobe",
    }
)  # fmt: skip


def _numbers(names: frozenset[str] | Mapping[str, object]) -> frozenset[int]:
    return frozenset(SYSCALLS[n] for n in names if n in SYSCALLS)


TIER0: Final = _numbers(TIER0_NAMES)
WORKER: Final = _numbers(WORKER_NAMES)
REFUSED: Final = _numbers(REFUSED_NAMES)
OPCODE_BY_NR: Final[Mapping[int, IoringOp]] = MappingProxyType(
    {SYSCALLS[n]: op for n, op in OPCODE_FOR.items() if n in SYSCALLS}
)

_LEGACY = Route(Tier.LEGACY)
_WORKER = Route(Tier.WORKER)
_TIER0 = Route(Tier.SHARED_PAGE)


def route_for(nr: int, supported: frozenset[int]) -> Route:
    """The route of *nr* on a kernel supporting *supported* opcodes (not cached)."""
    if nr in TIER0:
        return _TIER0
    if nr in REFUSED:
        return _LEGACY
    op = OPCODE_BY_NR.get(nr)
    if op is not None and int(op) in supported:
        return Route(Tier.IO_URING, int(op))
    if nr in WORKER:
        return _WORKER
    return _LEGACY


def build_table(supported: frozenset[int]) -> dict[int, Route]:
    """Route of every known syscall number for the opcode set *supported*."""
    return {nr: route_for(nr, supported) for nr in SYSCALLS.values()}


def is_refused(nr: int) -> bool:
    """True for process-altering syscalls, which are never executed through KSVC."""
    return nr in REFUSED


def io_uring_calls(router: SyscallRouter) -> frozenset[int]:
    """The syscall numbers *router* sends to io_uring (Tier 1): what a native lane may be offered."""
    return frozenset(nr for nr in SYSCALLS.values() if router.route(nr).tier is Tier.IO_URING)


def tier_counts(table: Mapping[int, Route]) -> dict[Tier, int]:
    """How many syscalls of *table* land in each tier."""
    counts = dict.fromkeys(Tier, 0)
    for route in table.values():
        counts[route.tier] += 1
    return counts


class TableRouter:
    """A router over a table built once from an opcode set (base of ``probe`` and ``static``)."""

    name = "table"

    def __init__(self, supported: frozenset[int], *, description: str = "") -> None:
        self.supported_opcodes = frozenset(supported)
        self.description = description
        self._table = build_table(self.supported_opcodes)
        self._routes = [self._table.get(nr, _LEGACY) for nr in range(max(self._table) + 1)]

    def route(self, nr: int) -> Route:
        """O(1): one list index."""
        if 0 <= nr < len(self._routes):
            return self._routes[nr]
        return _LEGACY

    def table(self) -> dict[int, Route]:
        """Every known syscall number with its route."""
        return dict(self._table)
