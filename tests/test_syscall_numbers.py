"""The x86-64 syscall table, pinned against the C library's header and the running kernel."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ksvc_host import native
from ksvc_host.abi.syscalls import MAX_SYSCALL_NR, SYSCALL_NAMES, SYSCALLS, name_of, nr


def test_table_matches_sys_syscall_h(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: cannot compare with <sys/syscall.h>")
    body = "".join(f'#ifdef SYS_{n}\nprintf("{n} %ld\\n", (long)SYS_{n});\n#endif\n' for n in SYSCALLS)
    src = tmp_path / "nrs.c"
    src.write_text(f"#include <stdio.h>\n#include <sys/syscall.h>\nint main(void){{\n{body}return 0;}}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "nrs"), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "nrs")], check=True, capture_output=True, text=True).stdout
    header = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}
    assert len(header) >= 300, "too few names compared with the header"
    assert {n: SYSCALLS[n] for n in header} == header


def test_numbers_by_behaviour() -> None:
    assert native.syscall(nr("getpid")) == os.getpid()
    assert native.syscall(nr("getppid")) == os.getppid()
    assert native.syscall(nr("getuid")) == os.getuid() and native.syscall(nr("getegid")) == os.getegid()
    buf = native.alloc(4096)
    n = native.syscall(nr("getcwd"), native.address_of(buf), 4096)
    assert bytes(native.ffi.buffer(buf, n)).rstrip(b"\0").decode() == os.getcwd()
    assert native.syscall(nr("close"), 99999) == -errno.EBADF


def test_newer_numbers_exist_on_this_kernel() -> None:
    # Past the C header's range: a wrong number would give ENOSYS (or do something else entirely).
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (6, 10):
        pytest.skip(f"kernel {os.uname().release} predates mseal")
    assert native.syscall(nr("cachestat"), 99999, 0, 0, 0) == -errno.EBADF
    assert native.syscall(nr("mseal"), 1, 4096, 0) == -errno.EINVAL  # unaligned start
    assert native.syscall(nr("listmount"), 0, 0, 0, 0) in (-errno.EFAULT, -errno.EINVAL)


def test_table_shape() -> None:
    assert len(SYSCALL_NAMES) == len(SYSCALLS)  # numbers are unique
    assert all(name_of(SYSCALLS[n]) == n for n in SYSCALLS)
    assert set(SYSCALL_NAMES) == set(range(0, 336)) | set(range(424, MAX_SYSCALL_NR + 1))
    assert MAX_SYSCALL_NR == 469
    with pytest.raises(KeyError, match="unknown syscall name"):
        nr("no_such_call")
