"""ksvc-futex's hook implementations."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _futex(ctx: BuildContext) -> Any:
    from ksvc_futex.notifier import FutexNotifier

    return FutexNotifier()


def _direct(ctx: BuildContext) -> Any:
    from ksvc_futex.direct_wake import DirectWakeSink

    return DirectWakeSink()


@hookimpl
def ksvc_register_notifier(register: Any) -> None:
    """``futex``."""
    register("futex", _futex, description="futex word wake; no syscall when nobody sleeps")


@hookimpl
def ksvc_register_completion_sink(register: Any) -> None:
    """``direct-wake``."""
    register("direct-wake", _direct, description="result straight to the waiting caller; wakes only it")
