"""The dispatcher through injected faults: back-pressure loses nothing; failures fail pending work clearly."""

from __future__ import annotations

import os
import threading
import time

import pytest

import ksvc_host as ksvc
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.plugins import PluginManager
from ksvc_host.testing import FaultInjector, faulty_plugin, shared_ring_statx


def _pm(*plugins: tuple[str, object]) -> PluginManager:
    return PluginManager(extra_plugins=plugins)


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("ksvc")}


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_refused_submits_and_enqueues_are_back_pressure(dispatcher: str) -> None:
    io = faulty_plugin("io_backend", "basic", refuse={"submit": range(1, 40)})
    pool = faulty_plugin("worker_pool", "fixed", refuse={"enqueue": range(1, 40)})
    sink = faulty_plugin("completion_sink", "ring", refuse={"push": range(1, 40)})
    with ksvc.open(plugins=_pm(io, pool, sink), io_backend="faulty-basic", worker_pool="faulty-fixed",
                   completion_sink="faulty-ring", dispatcher=dispatcher) as k:  # fmt: skip
        r, w = os.pipe()
        for _ in range(30):
            assert isinstance(shared_ring_statx(k), bytes)  # Tier 1 through the shared ring
            assert k.fcntl(r, 1) >= 0  # Tier 2
        assert io[1].built[0].calls["submit"] >= 40 and pool[1].built[0].calls["enqueue"] >= 40
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(("trait", "base", "method"), [("io_backend", "basic", "flush"),
                                                        ("worker_pool", "fixed", "enqueue"),
                                                        ("completion_sink", "ring", "flush_and_notify")])  # fmt: skip
def test_a_component_failing_while_serving_fails_pending_work_clearly(trait: str, base: str, method: str) -> None:
    plugin = faulty_plugin(trait, base, fail={method: {3}})
    k = ksvc.open(plugins=_pm(plugin), **{trait: f"faulty-{base}"})
    r, w = os.pipe()
    with pytest.raises((ksvc.DispatcherFailed, OSError)) as info:
        for _ in range(10):
            shared_ring_statx(k)  # Tier 1 through the shared ring
            k.fcntl(r, 1)
    assert "injected fault" in str(info.value) or isinstance(info.value, ksvc.DispatcherFailed)
    with pytest.raises(ksvc.DispatcherFailed, match="injected fault"):
        k.getppid() if False else k.fcntl(r, 1)
    k.close()
    with ksvc.open() as fresh:  # a fresh instance works afterwards
        assert fresh.fcntl(r, 1) >= 0
    os.close(r)
    os.close(w)


def test_stalls_only_slow_things_down() -> None:
    plugin = faulty_plugin("notifier", "eventfd", stall={"notify": ({1, 2}, 0.1)})
    # Inline: every turn that completes something notifies (a caller helping the threaded dispatcher
    # reaps its own completions without a notification, so the stall might never be reached).
    with ksvc.open(plugins=_pm(plugin), notifier="faulty-eventfd", dispatcher="inline") as k:
        t0 = time.monotonic()
        for _ in range(5):
            assert k.fcntl(0, 1) >= 0
        assert time.monotonic() - t0 >= 0.1


def test_a_factory_failing_at_build_is_named_and_leaves_nothing_behind() -> None:
    before = _threads()
    plugin = ("boom", type("Boom", (), {"ksvc_register_worker_pool": staticmethod(ksvc.hookimpl(
        lambda register: register("boom", lambda ctx: 1 / 0)))}))  # fmt: skip
    with pytest.raises(ksvc.KsvcError, match="worker_pool 'boom'.*ZeroDivisionError"):
        ksvc.open(plugins=_pm(plugin), worker_pool="boom")
    time.sleep(0.05)
    assert _threads() <= before


def test_injector_passes_everything_else_through() -> None:
    class T:
        name = "t"

        def f(self) -> int:
            return 7

    inj = FaultInjector(T(), fail={"f": {2}})
    assert inj.name == "t" and inj.f() == 7
    with pytest.raises(OSError, match="injected fault: f call 2"):
        inj.f()
    assert inj.f() == 7 and inj.calls == {"f": 3}
    assert SYSCALLS["read"] == 0


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
@pytest.mark.parametrize(("trait", "base", "method"), [("completion_sink", "ring", "push"),
                                                        ("io_backend", "basic", "submit"),
                                                        ("notifier", "eventfd", "notify")])  # fmt: skip
def test_both_dispatchers_fail_pending_callers_at_once(dispatcher: str, trait: str, base: str, method: str) -> None:
    # One transient fault: the dispatcher fails, every caller (the one whose entry was in the turn, and
    # one already waiting on another thread) gets DispatcherFailed promptly, never the raw fault, and
    # nothing stays pending.
    plugin = faulty_plugin(trait, base, fail={method: {1}})
    k = ksvc.open(plugins=_pm(plugin), dispatcher=dispatcher, **{trait: f"faulty-{base}"})
    r, w = os.pipe()
    got: list[BaseException] = []

    def blocked_reader() -> None:
        try:
            k.read(r, 10)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            got.append(exc)

    t = threading.Thread(target=blocked_reader, daemon=True)
    t.start()
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    t0 = time.monotonic()
    with pytest.raises(ksvc.DispatcherFailed, match="injected fault"):
        for _ in range(5):
            shared_ring_statx(k, "/proc/self/stat")  # the reader above waits in its lane (or there)
            time.sleep(0.05)
    t.join(2.0)
    assert not t.is_alive(), "a caller waiting on another thread was never told of the failure"
    assert len(got) == 1 and isinstance(got[0], ksvc.DispatcherFailed), got
    assert time.monotonic() - t0 < 2.0
    assert k.raw.pending() == 0
    k.close(timeout=0.5)
    for d in (fd, r, w):
        os.close(d)
