"""The two drivers of the dispatcher run the same turns: same results as ``os.*``, each on its own threads.

The thread driver runs every turn on its own thread, which ends when the
instance closes; the inline driver runs no thread: the callers run the
turns (docs/design.md §5).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host.dispatch import InlineDriver, ThreadDriver

DRIVERS = {"thread": ThreadDriver, "inline": InlineDriver}


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    p = tmp_path / "data"
    p.write_bytes(os.urandom(1 << 16))
    fd = os.open(p, os.O_RDWR)
    yield fd
    os.close(fd)


def _recording_turns(k: ksvc.Ksvc) -> set[int]:
    """The threads that run the dispatcher's turns from now on."""
    turn = k.instance.dispatcher.turn
    seen: set[int] = set()
    run = turn.run

    def recorded() -> bool:
        seen.add(threading.get_ident())
        return run()

    turn.run = recorded  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_both_drivers_give_the_results_of_os(mode: str, data_fd: int) -> None:
    # lanes=False: every call goes through the shared channel and the dispatcher's turns.
    with ksvc.open(dispatcher=mode, lanes=False) as k:
        disp = k.instance.dispatcher
        assert disp.mode == mode and type(disp.driver) is DRIVERS[mode]
        assert (disp.inline_driver is disp.driver) == (mode == "inline")
        before = disp.entries_processed
        for off in (0, 4096, (1 << 16) - 100, 1 << 16):  # Tier 1, the last two short and at the end
            assert k.pread(data_fd, 4096, off) == os.pread(data_fd, 4096, off)
        assert k.pwrite(data_fd, b"ksvc", 10) == 4 and os.pread(data_fd, 4, 10) == b"ksvc"
        assert k.fcntl(data_fd, fcntl.F_GETFL) == fcntl.fcntl(data_fd, fcntl.F_GETFL)  # Tier 2
        assert k.lseek(data_fd, 0, os.SEEK_END) == os.lseek(data_fd, 0, os.SEEK_END)
        assert k.fstat(data_fd).st_size == os.fstat(data_fd).st_size
        assert k.getcwd() == os.getcwd()
        with pytest.raises(OSError) as want:
            os.pread(-1, 10, 0)
        with pytest.raises(OSError) as got:
            k.pread(-1, 10, 0)
        assert got.value.errno == want.value.errno  # EBADF, as the kernel answers it
        assert disp.entries_processed - before >= 10  # all of it went through turns


def test_the_thread_driver_runs_every_turn_on_its_thread_which_ends_on_close(data_fd: int) -> None:
    k = ksvc.open(dispatcher="thread", lanes=False)
    driver = k.instance.dispatcher.driver
    assert isinstance(driver, ThreadDriver) and driver.thread is not None and driver.thread.is_alive()
    seen = _recording_turns(k)
    assert k.pread(data_fd, 100, 0) == os.pread(data_fd, 100, 0)
    assert k.getcwd() == os.getcwd()
    started = time.monotonic()
    k.close()
    driver.thread.join(2.0)
    assert not driver.thread.is_alive() and time.monotonic() - started < 2.0
    assert seen == {driver.thread.ident}


def test_the_inline_driver_runs_no_thread_the_callers_run_the_turns(data_fd: int) -> None:
    with ksvc.open(dispatcher="inline", lanes=False) as k:
        driver = k.instance.dispatcher.driver
        assert isinstance(driver, InlineDriver) and not hasattr(driver, "thread")
        assert not [t for t in threading.enumerate() if t.name == "ksvc-dispatcher"]
        seen = _recording_turns(k)
        assert k.pread(data_fd, 100, 0) == os.pread(data_fd, 100, 0)
        errors: list[BaseException] = []

        def other() -> None:
            try:
                assert k.fcntl(data_fd, fcntl.F_GETFL) == fcntl.fcntl(data_fd, fcntl.F_GETFL)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert not errors and t.ident is not None
        assert seen <= {threading.get_ident(), t.ident} and threading.get_ident() in seen
