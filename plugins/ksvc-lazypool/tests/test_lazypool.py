"""LazyPool grows under blocking load, shrinks when idle, and passes the conformance kit."""

from __future__ import annotations

import os
import time

import pytest
from ksvc_lazypool.pool import LazyPool

import ksvc_host as ksvc
from ksvc_host import native, testing
from ksvc_host.abi.syscalls import SYSCALLS


def test_conformance() -> None:
    testing.check_worker_pool(lambda allowed: LazyPool(max_workers=4, queue_size=64, allowed=allowed))


def test_grows_under_blocking_load_and_shrinks_when_idle() -> None:
    pool = LazyPool(max_workers=6, idle_timeout=0.2)
    assert pool.total == 1
    pipes = [os.pipe() for _ in range(5)]
    bufs = [native.alloc(1) for _ in pipes]
    for i, (r, _) in enumerate(pipes):
        assert pool.enqueue(i, SYSCALLS["read"], (r, native.address_of(bufs[i]), 1, 0, 0, 0))
    deadline = time.monotonic() + 2
    while pool.busy < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool.busy == 5 and pool.total >= 5  # every blocking call got its own thread
    assert pool.enqueue(99, SYSCALLS["getpid"], (0,) * 6)  # and a short one still runs
    deadline = time.monotonic() + 2
    got: dict[int, int] = {}
    while 99 not in got and time.monotonic() < deadline:
        got.update(pool.poll_completions())
        time.sleep(0.002)
    assert got.get(99) == os.getpid()
    for _, w in pipes:
        os.write(w, b"x")
    deadline = time.monotonic() + 5
    while pool.total > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.total == 1 and pool.peak_workers >= 5  # shrank back to min_workers
    pool.shutdown()
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_never_more_than_max() -> None:
    pool = LazyPool(max_workers=2, idle_timeout=0.1)
    r, w = os.pipe()
    buf = native.alloc(1)
    for i in range(4):
        pool.enqueue(i, SYSCALLS["read"], (r, native.address_of(buf), 1, 0, 0, 0))
    time.sleep(0.1)
    assert pool.total == 2 and pool.peak_workers == 2
    os.write(w, b"xxxx")
    pool.shutdown()
    assert len(pool.poll_completions()) == 4
    os.close(r)
    os.close(w)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        LazyPool(max_workers=2, min_workers=3)


def test_selected_by_name() -> None:
    testing.check_instance(worker_pool="lazy")
    with ksvc.open(worker_pool="lazy", options={"max_workers": 3}) as k:
        assert k.instance.worker_pool.name == "lazy" and k.instance.worker_pool.max_workers == 3
