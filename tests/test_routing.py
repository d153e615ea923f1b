"""Routing (docs/design.md §1): the runtime-detection table, the running kernel, refused and unknown numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ksvc_host.abi.io_uring import IoringOp, opcodes_for_kernel
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.routing import REFUSED_NAMES, TIER0_NAMES, TableRouter, build_table, tier_counts
from ksvc_host.traits import Tier


def _tier(router: TableRouter, name: str) -> Tier:
    return router.route(SYSCALLS[name]).tier


@pytest.mark.parametrize(
    ("kernel", "bind", "listen", "pipe2"),
    [
        ("6.8", Tier.WORKER, Tier.WORKER, Tier.WORKER),
        ("6.11", Tier.IO_URING, Tier.IO_URING, Tier.WORKER),
        ("6.14", Tier.IO_URING, Tier.IO_URING, Tier.WORKER),
        ("6.16", Tier.IO_URING, Tier.IO_URING, Tier.IO_URING),
        ("newest", Tier.IO_URING, Tier.IO_URING, Tier.IO_URING),
    ],
)
def test_runtime_detection_table(kernel: str, bind: Tier, listen: Tier, pipe2: Tier) -> None:
    r = TableRouter(opcodes_for_kernel(kernel))
    assert (_tier(r, "bind"), _tier(r, "listen"), _tier(r, "pipe2")) == (bind, listen, pipe2)
    # Promotion never demotes: everything Tier 1 on an older kernel stays Tier 1.
    assert _tier(r, "pread64") is Tier.IO_URING and _tier(r, "fcntl") is Tier.WORKER


def test_ftruncate_arrives_in_6_9() -> None:
    assert _tier(TableRouter(opcodes_for_kernel("6.8")), "ftruncate") is Tier.WORKER
    assert _tier(TableRouter(opcodes_for_kernel("6.9")), "ftruncate") is Tier.IO_URING


def test_running_kernel_probe(kt: object) -> None:
    import ksvc_host as ksvc

    assert isinstance(kt, ksvc.Ksvc)
    router = kt.instance.router
    supported = router.supported_opcodes
    assert IoringOp.READ in supported and IoringOp.OPENAT in supported
    for name, op in (("bind", IoringOp.BIND), ("listen", IoringOp.LISTEN), ("pipe2", IoringOp.PIPE)):
        expected = Tier.IO_URING if op in supported else Tier.WORKER
        assert router.route(SYSCALLS[name]).tier is expected
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) >= (6, 16):
        assert router.route(SYSCALLS["pipe2"]).tier is Tier.IO_URING


def test_tier0_and_refused_sets() -> None:
    r = TableRouter(opcodes_for_kernel("newest"))
    for name in TIER0_NAMES:
        assert _tier(r, name) is Tier.SHARED_PAGE, name
    for name in (
        "fork",
        "vfork",
        "clone",
        "clone3",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "rt_sigreturn",
    ):
        assert name in REFUSED_NAMES
        assert _tier(r, name) is Tier.LEGACY, name


@pytest.mark.parametrize("nr", [-1, 470, 1000, 2**31, 2**32 - 1, 2**64])
def test_unknown_numbers_are_tier3(nr: int) -> None:
    assert TableRouter(opcodes_for_kernel("newest")).route(nr).tier is Tier.LEGACY


def test_every_listed_syscall_is_offloaded() -> None:
    issue_list = (
        "read write pread64 pwrite64 readv writev preadv pwritev openat openat2 close statx fsync fdatasync "
        "sync_file_range fallocate ftruncate renameat renameat2 unlinkat mkdirat symlinkat linkat fadvise64 "
        "madvise setxattr getxattr fsetxattr fgetxattr socket bind listen accept4 connect sendto recvfrom "
        "sendmsg recvmsg shutdown splice tee pipe2 epoll_ctl waitid open stat lstat fstat rename unlink mkdir "
        "rmdir link symlink"
    ).split()
    tier2 = (
        "dup dup2 dup3 fcntl ioctl lseek setsockopt getsockopt getsockname getpeername getdents64 access "
        "faccessat fchmod fchmodat fchown fchownat utimensat flock readlink readlinkat getcwd getrandom"
    ).split()
    newest = TableRouter(opcodes_for_kernel("newest"))
    for name in issue_list:
        assert _tier(newest, name) is Tier.IO_URING, name
    for name in tier2:
        assert _tier(newest, name) is Tier.WORKER, name
    oldest = TableRouter(frozenset())  # a kernel without io_uring opcodes: everything falls to Tier 2
    for name in issue_list:
        assert _tier(oldest, name) is Tier.WORKER, name


def test_tier_counts_add_up() -> None:
    table = build_table(opcodes_for_kernel("6.8"))
    counts = tier_counts(table)
    assert sum(counts.values()) == len(SYSCALLS)
    assert counts[Tier.SHARED_PAGE] == len(TIER0_NAMES)


def _probe_json(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "ksvc_host.cli", "probe", "--json", *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_cli_probe_running_kernel_and_static() -> None:
    live = _probe_json()
    routes = live["routes"]
    assert isinstance(routes, dict)
    assert live["kernel"] == os.uname().release
    if "PIPE" in live["supported_opcodes"]:  # type: ignore[operator]
        for name in ("bind", "listen", "pipe2"):
            assert routes[name]["tier"] == 1
    features = {f["feature"]: f for f in live["features"]}  # type: ignore[union-attr]
    assert set(features) >= {"sqpoll", "fixed-buffers", "provided-ring", "send-zc", "multishot-accept"}
    assert all(isinstance(f["supported"], bool) and f["detail"] for f in features.values())
    old = _probe_json("--kernel", "6.8")
    for name in ("bind", "listen", "pipe2"):
        assert old["routes"][name]["tier"] == 2  # type: ignore[index]
    out = subprocess.run(
        [sys.executable, "-m", "ksvc_host.cli", "probe", "--kernel", "banana"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and "banana" in out.stderr
