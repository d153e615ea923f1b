"""The conformance kit on broken implementations: every check fails, naming the contract, in bounded time.

Each broken implementation breaks one rule of its trait's contract and is
otherwise real (it wraps the ``ksvc-basic`` implementation). They reach
:func:`ksvc_host.testing.check_instance` the way the kit takes any
implementation: registered by a plugin object in a
``PluginManager(extra_plugins=...)``, passed as ``plugins=``, and selected
by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ksvc_basic.basic_iouring import BasicIoUring
from ksvc_basic.composite import build_io_uring
from ksvc_basic.eventfd_notifier import EventFdNotifier
from ksvc_basic.mmap_shared_page import MmapSharedPage
from ksvc_basic.ring_sink import RingCompletionSink

import ksvc_host as ksvc
from ksvc_host import testing
from ksvc_host.instance import BuildContext
from ksvc_host.plugins import REGISTER_HOOKS, PluginManager
from ksvc_host.testing import kit
from ksvc_host.traits.io_backend import IoCompletion

SHORT_DEADLINE = 1.0
"""The kit's per-step deadline in most tests here (the default, 5 s, would make this file take a minute)."""
DEFAULT_BOUND = 10.0
"""What a failing check may take with the kit's default deadline."""

_BYPASSING = frozenset({"express_lane", "pending_tail", "set_completion_wakeups", "completions_ready",
                        "publish_quietly", "attach"})  # fmt: skip
"""Capabilities that would let the dispatcher go around the broken method (the express lane, quiet publishing)."""


class _Wrapper:
    """Everything passes through to *inner*, except the capabilities that bypass its methods."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        if attr in _BYPASSING:
            raise AttributeError(attr)
        return getattr(self._inner, attr)


class SilentNotifier(EventFdNotifier):
    """notify() does nothing: a waiter is never woken."""

    name = "silent"

    def notify(self) -> None:
        pass


class SleepyNotifier(EventFdNotifier):
    """wait() ignores its timeout and never returns."""

    name = "sleepy"

    def wait(self, timeout: float | None = None) -> bool:
        threading.Event().wait()
        return False


class DroppingSink(_Wrapper):
    """push() says yes and drops the completion; flush_and_notify() still notifies."""

    def push(self, corr_id: int, result: int, flags: int = 0) -> bool:
        return True

    def push_batch(self, items: Any) -> int:
        return len(list(items))

    def flush_and_notify(self) -> None:
        self._inner.notifier.notify()


class DeafIoBackend(_Wrapper):
    """The kernel completes every SQE, but poll_completions() never returns one."""

    def poll_completions(self, max_count: int = 64) -> list[IoCompletion]:
        return []


class StuckPool:
    """enqueue() accepts every job; none ever runs or completes."""

    name = "stuck"
    busy = 0
    total = 1
    max_workers = 1

    def __init__(self, allowed: Callable[[int], bool] | None = None) -> None:
        self.jobs: list[tuple[int, int]] = []

    def enqueue(self, token: int, nr: int, args: tuple[int, ...]) -> bool:
        self.jobs.append((token, nr))
        return True

    def poll_completions(self, max_count: int = 64) -> list[tuple[int, int]]:
        return []

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        pass

    def pending(self) -> int:
        return len(self.jobs)

    def shutdown(self, wait: bool = True) -> None:
        pass


def _ring_sink(ctx: BuildContext) -> RingCompletionSink:
    assert ctx.notifier is not None
    return RingCompletionSink(ctx.channel.completion_ring, ctx.notifier)


BROKEN: dict[str, tuple[str, Callable[[BuildContext], Any]]] = {
    "notifier": ("silent", lambda ctx: SilentNotifier()),
    "completion_sink": ("dropping", lambda ctx: DroppingSink(_ring_sink(ctx), "dropping")),
    "io_backend": ("deaf", lambda ctx: DeafIoBackend(build_io_uring(ctx), "deaf")),
    "worker_pool": ("stuck", lambda ctx: StuckPool()),
}
"""Per trait: the broken implementation's name and factory, as a plugin registers them."""


def _plugin(trait: str, name: str, factory: Callable[[BuildContext], Any]) -> tuple[str, Any]:
    """A plugin object registering *factory* as *trait* implementation *name* (for ``extra_plugins``)."""
    hook = REGISTER_HOOKS[trait]

    def register_hook(register: Callable[..., None]) -> None:
        register(name, factory, description=f"broken {trait} for the kit's tests")

    register_hook.__name__ = hook
    return f"broken-{trait}", type(f"Broken_{trait}", (), {hook: staticmethod(ksvc.hookimpl(register_hook))})


@pytest.fixture(scope="module")
def broken_plugins() -> PluginManager:
    """Installed plugins plus every broken implementation above."""
    return PluginManager(extra_plugins=[_plugin(trait, *impl) for trait, impl in BROKEN.items()])


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """The kit's per-step deadline, shortened for this test."""
    monkeypatch.setattr(kit, "DEADLINE", SHORT_DEADLINE)
    yield SHORT_DEADLINE


def _bound(deadline: float) -> float:
    """How long a check with per-step *deadline* may take to fail (the step, the grace of waits, slack)."""
    return deadline + kit._WAIT_GRACE + 2.0


def expect_failure(check: Callable[[], None], pattern: str, bound: float) -> str:
    """Run *check*: it must raise ``AssertionError`` matching *pattern* within *bound* seconds."""
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=pattern) as info:
        check()
    took = time.monotonic() - t0
    assert took < bound, f"the check failed as it should, but only after {took:.1f} s (bound {bound:g} s)"
    return str(info.value)


def test_the_reported_hang_fails_with_the_default_deadline(broken_plugins: PluginManager) -> None:
    # Defect 10 as reported: check_instance(notifier=...) with a notifier that never notifies hung pytest.
    msg = expect_failure(lambda: testing.check_instance(plugins=broken_plugins, notifier="silent"),
                         r"notifier 'silent'.*notif", DEFAULT_BOUND)  # fmt: skip
    assert "notify() must wake wait()" in msg


CONTRACTS = {
    "notifier": r"notifier 'silent': no notification within .* notify\(\) must wake wait\(\)",
    "completion_sink": r"completion sink 'dropping': .*push\(\) must not drop",
    "io_backend": r"io backend 'deaf': .*SQE.*poll_completions\(\)",
    "worker_pool": r"worker pool 'stuck': .*job.*poll_completions\(\)",
}
"""Per trait: what check_instance's failure says about the broken implementation."""


@pytest.mark.parametrize("trait", list(BROKEN))
def test_check_instance_names_the_broken_component(
    broken_plugins: PluginManager, short_deadline: float, trait: str
) -> None:
    name = BROKEN[trait][0]
    expect_failure(lambda: testing.check_instance(plugins=broken_plugins, **{trait: name}), CONTRACTS[trait],
                   _bound(short_deadline))  # fmt: skip


@pytest.mark.parametrize("trait", list(BROKEN))
def test_check_instance_is_bounded_with_the_inline_dispatcher(
    broken_plugins: PluginManager, short_deadline: float, trait: str
) -> None:
    # The inline dispatcher runs in the caller: a blocking call never sleeps on the notifier, so a silent
    # notifier may go unnoticed there. Every other broken part must fail the check; none may hang it.
    name = BROKEN[trait][0]
    t0 = time.monotonic()
    try:
        testing.check_instance(plugins=broken_plugins, dispatcher="inline", **{trait: name})
    except AssertionError as exc:
        assert repr(name) in str(exc), f"the failure does not name {trait} {name!r}: {exc}"
    else:
        assert trait == "notifier", f"check_instance passed a stack with a broken {trait}"
    assert time.monotonic() - t0 < _bound(short_deadline)


def test_check_notifier_silent() -> None:
    expect_failure(lambda: testing.check_notifier(SilentNotifier), r"notifier 'silent': .*notif", 2.0)


def test_check_notifier_whose_wait_never_returns(short_deadline: float) -> None:
    # The kit's own waits are bounded (wait(5)); a wait() that ignores its timeout is caught by the watchdog.
    expect_failure(lambda: testing.check_notifier(SleepyNotifier), r"notifier 'sleepy': wait\(.*did not finish",
                   5 + _bound(short_deadline))  # fmt: skip


def test_check_completion_sink_dropping() -> None:
    def factory(ch: Any, n: Any) -> DroppingSink:
        return DroppingSink(RingCompletionSink(ch.completion_ring, n), "dropping")

    pattern = r"completion sink 'dropping': push\(\) accepted 40 completions, .* 0 reached the consumer"
    expect_failure(lambda: testing.check_completion_sink(factory, EventFdNotifier), pattern, 2.0)


def test_check_io_backend_deaf(short_deadline: float) -> None:
    expect_failure(lambda: testing.check_io_backend(lambda: DeafIoBackend(BasicIoUring(16), "deaf")),
                   r"io backend 'deaf': timed out .* every SQE submit\(\) accepted must yield a CQE from "
                   r"poll_completions\(\)", _bound(short_deadline))  # fmt: skip


def test_check_worker_pool_stuck(short_deadline: float) -> None:
    expect_failure(lambda: testing.check_worker_pool(StuckPool),
                   r"worker pool 'stuck': timed out .* every job enqueue\(\) accepted must yield one completion",
                   _bound(short_deadline))  # fmt: skip


class WrongPidPage(MmapSharedPage):
    """Every field right but the pid."""

    name = "wrong-pid"
    pid = property(lambda self: -1)


def test_a_failing_assertion_keeps_its_message_and_gains_the_subject() -> None:
    expect_failure(lambda: testing.check_shared_page(WrongPidPage), r"^shared page 'wrong-pid': shared page \(-1, ",
                   2.0)  # fmt: skip


def test_sound_implementations_still_pass_quickly() -> None:
    t0 = time.monotonic()
    testing.check_notifier(EventFdNotifier)
    testing.check_completion_sink(lambda ch, n: RingCompletionSink(ch.completion_ring, n), EventFdNotifier)
    testing.check_io_backend(lambda: BasicIoUring(16))
    testing.check_instance()
    assert time.monotonic() - t0 < 5.0
