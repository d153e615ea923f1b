"""fixed-files: registered descriptors run as fixed files, results equal os.*, slots are released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host import testing


@pytest.mark.parametrize("backend", ["fixed-files", "sqpoll+fixed-files"])
def test_stack(backend: str) -> None:
    try:
        testing.check_instance(io_backend=backend)
    except ksvc.SelectionError as exc:
        pytest.skip(f"not installed here: {exc}")


def test_registered_descriptor_is_used_as_a_fixed_file(tmp_path: Path) -> None:
    p = tmp_path / "d"
    p.write_bytes(os.urandom(1 << 16))
    with ksvc.open(io_backend="fixed-files", options={"fixed_file_slots": 4}) as k:
        ff = k.fixed_files
        assert ff is not None
        fd = k.open(p, os.O_RDWR)
        slot = ff.register(fd)
        assert ff.register(fd) == slot and ff.registered() == {fd: slot}
        for i in range(16):
            assert k.pread(fd, 4096, i * 4096) == os.pread(fd, 4096, i * 4096)
        assert k.pwrite(fd, b"fixed", 0) == 5 and os.pread(fd, 5, 0) == b"fixed"
        assert ff.rewritten >= 17
        k.close(fd)  # releases the slot before closing
        assert ff.registered() == {}
        fds = [os.open(p, os.O_RDONLY) for _ in range(5)]
        for f in fds[:4]:
            ff.register(f)
        with pytest.raises(OSError, match="fixed_file_slots"):
            ff.register(fds[4])
        for f in fds:
            ff.unregister(f)
            os.close(f)
