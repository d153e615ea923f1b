"""Property-based tests (hypothesis): KSVC behaves like os.*, and raw entries complete exactly once."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ksvc_host as ksvc
from ksvc_host import native
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS

NR = SYSCALLS
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def shared() -> Iterator[ksvc.Ksvc]:
    with ksvc.open() as k:
        yield k


offsets = st.integers(min_value=0, max_value=70_000)
sizes = st.integers(min_value=0, max_value=9000)
file_ops = st.one_of(
    st.tuples(st.just("pwrite"), st.binary(max_size=5000), offsets),
    st.tuples(st.just("pread"), sizes, offsets),
    st.tuples(st.just("write"), st.binary(max_size=5000)),
    st.tuples(st.just("read"), sizes),
    st.tuples(st.just("lseek"), st.integers(min_value=-100, max_value=70_000), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("ftruncate"), st.integers(min_value=-5, max_value=70_000)),
    st.tuples(st.just("fstat")),
    st.tuples(st.just("fsync")),
)


def _apply(mod: object, fd: int, op: tuple) -> object:  # type: ignore[type-arg]
    name, *args = op
    try:
        if name == "fstat":
            st_ = mod.fstat(fd)  # type: ignore[attr-defined]
            return ("size", st_.st_size, st_.st_blocks)
        if name == "fsync":
            return mod.fsync(fd)  # type: ignore[attr-defined]
        return getattr(mod, name)(fd, *args)
    except OSError as exc:
        return ("OSError", exc.errno)


@SETTINGS
@given(initial=st.binary(max_size=20_000), ops=st.lists(file_ops, max_size=25))
def test_file_operations_match_os(shared: ksvc.Ksvc, initial: bytes, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, s) for s in "ok"]
        for p in paths:
            with open(p, "wb") as f:
                f.write(initial)
        fd_os, fd_k = os.open(paths[0], os.O_RDWR), shared.open(paths[1], os.O_RDWR)
        try:
            for op in ops:
                assert _apply(shared, fd_k, op) == _apply(os, fd_os, op), op
            assert open(paths[0], "rb").read() == open(paths[1], "rb").read()
        finally:
            os.close(fd_os)
            shared.close(fd_k)


def _scratch() -> tuple[list[int], list[int], object]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    mem = native.alloc(1 << 16)
    base = native.address_of(mem)
    fds = [r, w, null, 9999, 2**31 - 1]
    # Pointers the kernel may be handed: a private scratch area, NULL, unmapped low memory, kernel space.
    ptrs = [base, base + 4096, 0, 16, 0xFFFF_8000_0000_0000]
    return fds, ptrs, mem


SAFE = ["getpid", "getppid", "getuid", "fcntl", "lseek", "read", "pread64", "write", "fstat", "close", "getcwd"]
NEVER = ["fork", "vfork", "execve", "exit", "exit_group", "setuid", "mmap", "munmap", "clone3", "ptrace"]


@SETTINGS
@given(data=st.data())
def test_random_raw_entries_complete_exactly_once(shared: ksvc.Ksvc, data: st.DataObject) -> None:
    fds, ptrs, mem = _scratch()
    try:
        entries = []
        for _ in range(data.draw(st.integers(min_value=1, max_value=40))):
            kind = data.draw(st.sampled_from(["safe", "safe", "safe", "refused", "unknown"]))
            if kind == "safe":
                name = data.draw(st.sampled_from(SAFE))
                fd = data.draw(st.sampled_from(fds if name != "close" else [9999, 2**31 - 1]))
                if name == "kill":
                    continue
                args = {
                    "fcntl": (fd, data.draw(st.sampled_from([1, 3]))),
                    "lseek": (fd, data.draw(st.integers(-10, 10**6)) & (2**64 - 1), data.draw(st.integers(0, 4))),
                    "read": (fd, data.draw(st.sampled_from(ptrs)), data.draw(st.integers(0, 4096))),
                    "pread64": (fd, data.draw(st.sampled_from(ptrs)), data.draw(st.integers(0, 4096)), 0),
                    "write": (fd, data.draw(st.sampled_from(ptrs)), data.draw(st.integers(0, 4096))),
                    "fstat": (fd, data.draw(st.sampled_from(ptrs))),
                    "close": (fd,),
                    "getcwd": (data.draw(st.sampled_from(ptrs)), data.draw(st.integers(0, 4096))),
                }.get(name, ())
                nr = NR[name]
            elif kind == "refused":
                nr, args = (
                    NR[data.draw(st.sampled_from(NEVER))],
                    tuple(data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))),
                )
            else:
                nr, args = data.draw(st.integers(min_value=470, max_value=2**32 - 1)), ()
            flags = data.draw(st.integers(min_value=0, max_value=7))
            entries.append((nr, args, flags))
        if not entries:
            return
        shared.raw.completions()  # nothing may be left over from an earlier example
        ids = shared.raw.submit(entries)
        got: dict[int, int] = {}
        while len(got) < len(ids):
            for c in shared.raw.completions(wait_for=1):
                assert c.corr_id in ids, f"a completion for an entry never submitted here: {c}"
                assert not c.flags & L.COMPLETION_FLAG_MORE, "no multishot was asked for"
                assert c.corr_id not in got, "an entry completed twice"
                got[c.corr_id] = c.result
        for (nr, _, _flags), corr in zip(entries, ids, strict=True):
            if nr in {NR[n] for n in NEVER}:
                assert got[corr] in (-errno.EPERM, -errno.ECANCELED, -errno.EINVAL, -errno.EOPNOTSUPP)
        assert shared.getpid() == os.getpid()  # the process survived and the instance serves
    finally:
        for fd in fds[:3]:
            os.close(fd)
        del mem
