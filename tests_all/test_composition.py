"""Every io_uring feature composes into one backend, in any order (the seed's CompositeIoUring).

Collected only by the tox environment that installs every plugin.
"""

from __future__ import annotations

import itertools
import os

import pytest

import ksvc_host as ksvc
from ksvc_host import testing
from ksvc_host.abi.io_uring import SetupFlag

FEATURES = ["sqpoll", "fixed-files", "fixed-buffers"]


@pytest.mark.parametrize("order", list(itertools.permutations(FEATURES)))
def test_sqpoll_fixed_files_fixed_buffers_in_any_order(order: tuple[str, ...]) -> None:
    name = "+".join(order)
    with ksvc.open(io_backend=name) as k:
        be = k.instance.io_backend
        assert be.ring.flags & SetupFlag.SQPOLL  # type: ignore[attr-defined]
        assert be.fixed_files is not None and be.fixed_buffers is not None  # type: ignore[attr-defined]
        assert k.instance.selection.io_features == order
    testing.check_instance(io_backend=name, buffer_provider="registered")


def test_everything_at_once(tmp_path: object) -> None:
    name = "sqpoll+fixed-files+fixed-buffers+send-zc+multishot-accept"
    testing.check_instance(io_backend=name, worker_pool="lazy", notifier="futex", buffer_provider="registered",
                           shared_page="cached")  # fmt: skip
    with ksvc.open(io_backend=name, buffer_provider="registered") as k:
        fd = k.open("/proc/self/stat", os.O_RDONLY)
        k.fixed_files.register(fd)
        assert k.pread(fd, 5, 0) == os.pread(fd, 5, 0)
        k.close(fd)


def test_unknown_feature_in_a_combination_names_it() -> None:
    with pytest.raises(ksvc.SelectionError, match="'turbo'"):
        ksvc.open(io_backend="sqpoll+turbo")
    with pytest.raises(ksvc.SelectionError, match="twice"):
        ksvc.open(io_backend="sqpoll+sqpoll")
