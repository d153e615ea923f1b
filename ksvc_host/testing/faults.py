"""Fault injection around any implementation, to test what the dispatcher does when parts misbehave.

:class:`FaultInjector` wraps an object and, on chosen calls (counted from
1) of chosen methods, makes them *fail* (raise), *refuse* (return
``False``: back-pressure) or *stall* (sleep first). Everything else is
passed through, so the wrapper satisfies the same Protocol as what it
wraps. :func:`faulty_plugin` registers wrapped copies of installed
implementations under new names, for ``ksvc.open(plugins=...)``.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ksvc_host.hookspecs import hookimpl
from ksvc_host.plugins import REGISTER_HOOKS


class InjectedFault(OSError):
    """The error a *fail* injection raises."""


_BYPASSING = frozenset({"express_ring", "pending_tail", "set_completion_wakeups", "completions_ready",
                        "publish_quietly"})
"""Capabilities that let the dispatcher go around a component's methods (the express lane, quiet
publishing): hidden, so every call reaches the methods being faulted."""


class FaultInjector:
    """Wrap *target*; ``fail``/``refuse``/``stall`` map method names to the call numbers affected."""

    def __init__(
        self,
        target: Any,
        *,
        fail: dict[str, Collection[int]] | None = None,
        refuse: dict[str, Collection[int]] | None = None,
        stall: dict[str, tuple[Collection[int], float]] | None = None,
    ) -> None:
        self._target = target
        self._fail = fail or {}
        self._refuse = refuse or {}
        self._stall = stall or {}
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        """How often each wrapped method was called."""

    def __getattr__(self, name: str) -> Any:
        if name in _BYPASSING:
            raise AttributeError(f"{name} is hidden by the fault injector: it would bypass the wrapped methods")
        attr = getattr(self._target, name)
        if not callable(attr) or name not in {*self._fail, *self._refuse, *self._stall}:
            return attr

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                n = self.calls[name] = self.calls.get(name, 0) + 1
            stall = self._stall.get(name)
            if stall is not None and n in stall[0]:
                time.sleep(stall[1])
            if n in self._fail.get(name, ()):
                raise InjectedFault(errno.EIO, f"injected fault: {name} call {n}")
            if n in self._refuse.get(name, ()):
                return False
            return attr(*args, **kwargs)

        return wrapped


def faulty_plugin(trait: str, base: str, **injector: Any) -> tuple[str, Any]:
    """A plugin registering ``faulty-<base>`` for *trait*: the installed *base* wrapped in a FaultInjector.

    Pass the result in ``PluginManager(extra_plugins=[...])``. The list of
    built injectors is available as ``plugin.built``.
    """
    hook = REGISTER_HOOKS[trait]
    built: list[FaultInjector] = []

    def factory(ctx: Any) -> FaultInjector:
        impl = ctx.plugins.get(trait, base)
        if impl is None:
            raise LookupError(f"{trait} {base!r} is not installed; nothing to wrap")
        inj = FaultInjector(impl.factory(ctx), **injector)
        built.append(inj)
        return inj

    def register_hook(register: Callable[..., None]) -> None:
        register(f"faulty-{base}", factory, description=f"{base} with injected faults")

    register_hook.__name__ = hook
    plugin = type(f"Faulty_{trait}", (), {hook: staticmethod(hookimpl(register_hook)), "built": built})
    return f"faulty-{trait}-{base}", plugin
