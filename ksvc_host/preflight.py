"""``python -m ksvc_host.preflight``: fail loudly when io_uring is unusable here.

The test suite needs a kernel with io_uring enabled. Run before the tests
(tox does), it exits non-zero with the reason rather than letting every
io_uring test be skipped.
"""

from __future__ import annotations

import os
import sys

from ksvc_host import native

_NR_IO_URING_SETUP = 425


def check_io_uring() -> str | None:
    """``None`` when an io_uring can be created, else why not."""
    params = native.alloc(120)
    fd = native.syscall(_NR_IO_URING_SETUP, 4, native.address_of(params))
    if fd >= 0:
        os.close(fd)
        return None
    reason = os.strerror(-fd)
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
        if disabled != "0":
            reason += f" (kernel.io_uring_disabled = {disabled})"
    except OSError:
        pass
    return f"io_uring_setup failed: {reason}"


def main() -> int:
    """Exit 0 with a one-line report, or 1 with the reason io_uring is unavailable."""
    problem = check_io_uring()
    if problem:
        print(
            f"preflight: io_uring is unavailable on this machine: {problem}. KSVC's tests need it.",
            file=sys.stderr,
        )
        return 1
    print(f"preflight: io_uring available on kernel {os.uname().release}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
