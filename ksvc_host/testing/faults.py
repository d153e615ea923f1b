"""Fault injection around any implementation, to test what the dispatcher does when parts misbehave.

:class:`FaultInjector` wraps an object and, on chosen calls (counted from
1) of chosen methods, makes them *fail* (raise), *refuse* (return
``False``: back-pressure) or *stall* (sleep first). Everything else is
passed through. The wrapper declares exactly the surface production uses:
the members of the trait its target satisfies, and of each capability
(:mod:`ksvc_host.traits.capabilities`) the target has, except those that
would let the dispatcher go around the faulted methods (:data:`HIDDEN`);
so ``isinstance(wrapper, Capability)`` answers as for the target, and
nothing else reaches it. :func:`faulty_plugin` registers wrapped copies of installed
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
from ksvc_host.traits import (
    AttachableCompletionSink,
    BufferProvider,
    CancelAllIoBackend,
    CancellableWorkerPool,
    ClosableBufferProvider,
    CompletionSink,
    ExpressCompletionSink,
    ExpressIoBackend,
    FixedBuffersIoBackend,
    FixedFilesIoBackend,
    IoBackend,
    MultishotIoBackend,
    Notifier,
    OwnRings,
    PipelinedIoBackend,
    QuietIoBackend,
    SharedPage,
    SyscallRouter,
    WorkerPool,
)


class InjectedFault(OSError):
    """The error a *fail* injection raises."""


TRAIT_PROTOCOLS: dict[str, type] = {
    "io_backend": IoBackend,
    "worker_pool": WorkerPool,
    "notifier": Notifier,
    "completion_sink": CompletionSink,
    "buffer_provider": BufferProvider,
    "shared_page": SharedPage,
    "router": SyscallRouter,
}
"""Trait key -> the Protocol a wrapper of that trait declares."""

_CARRIED: tuple[type, ...] = (
    CancellableWorkerPool,
    OwnRings,
    PipelinedIoBackend,
    MultishotIoBackend,
    CancelAllIoBackend,
    FixedFilesIoBackend,
    FixedBuffersIoBackend,
    AttachableCompletionSink,
    ClosableBufferProvider,
)
"""Capabilities a wrapper declares exactly when what it wraps does."""

HIDDEN: tuple[type, ...] = (QuietIoBackend, ExpressIoBackend, ExpressCompletionSink)
"""Capabilities that let the dispatcher go around a component's methods (the express lane, quiet
wake-ups): never declared by a wrapper, so every call reaches the methods being faulted."""


def _members(protocol: type) -> tuple[list[str], list[str]]:
    """The methods and the attributes (data members and properties) *protocol* declares."""
    methods, attributes = [], []
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            attributes.append(name)
        elif callable(value):
            methods.append(name)
    attributes += [n for n in vars(protocol).get("__annotations__", {}) if n not in attributes]
    return methods, attributes


class FaultInjector:
    """Wrap *target*; ``fail``/``refuse``/``stall`` map method names to the call numbers affected.

    Build one with ``FaultInjector(target, ...)``: the object made is of a
    class (one per trait and set of capabilities) that declares exactly the
    members of *target*'s trait (*trait*, a Protocol of
    :data:`TRAIT_PROTOCOLS`; by default the one *target* satisfies) and of
    its capabilities in :data:`_CARRIED`, each passed through (and faulted
    where asked). A target of no trait is wrapped for the methods named in
    the injections and ``name``.
    """

    _methods: tuple[str, ...] = ()
    _attributes: tuple[str, ...] = ()

    def __new__(cls, target: Any, *, trait: type | None = None, **injections: Any) -> Any:
        if cls is FaultInjector:
            cls = _wrapper_class(target, trait, injections)
        return super().__new__(cls)

    def __init__(
        self,
        target: Any,
        *,
        trait: type | None = None,
        fail: dict[str, Collection[int]] | None = None,
        refuse: dict[str, Collection[int]] | None = None,
        stall: dict[str, tuple[Collection[int], float]] | None = None,
    ) -> None:
        self._target = target
        self._fail = fail or {}
        self._refuse = refuse or {}
        self._stall = stall or {}
        self._faulted = frozenset({*self._fail, *self._refuse, *self._stall})
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        """How often each faulted method was called."""
        self._bound: dict[str, Callable[..., Any]] = {m: _lookup(target, m) for m in self._methods}
        """The wrapped object's methods, looked up once."""

    @property
    def target(self) -> Any:
        """The wrapped object."""
        return self._target

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fn = self._bound[name]
        if name not in self._faulted:
            return fn(*args, **kwargs)
        with self._lock:
            n = self.calls[name] = self.calls.get(name, 0) + 1
        stall = self._stall.get(name)
        if stall is not None and n in stall[0]:
            time.sleep(stall[1])
        if n in self._fail.get(name, ()):
            raise InjectedFault(errno.EIO, f"injected fault: {name} call {n}")
        if n in self._refuse.get(name, ()):
            return False
        return fn(*args, **kwargs)


def _lookup(target: Any, name: str) -> Any:
    """The member *name* of *target*: the one place a wrapper reads its target by name (members of Protocols)."""
    return getattr(target, name)


def _method(name: str) -> Callable[..., Any]:
    def method(self: FaultInjector, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    method.__name__ = name
    return method


def _attribute(name: str) -> property:
    def get(self: FaultInjector) -> Any:
        return _lookup(self._target, name)

    return property(get, doc=f"The wrapped object's ``{name}``.")


_CLASSES: dict[tuple[type | None, tuple[type, ...], frozenset[str]], type] = {}


def _wrapper_class(target: Any, trait: type | None, injections: dict[str, Any]) -> type:
    """The wrapper class for *target*: its trait's and its carried capabilities' members, nothing else.

    *trait*: the trait's Protocol; by default the first of :data:`TRAIT_PROTOCOLS` *target* satisfies.
    """
    if trait is None:
        trait = next((p for p in TRAIT_PROTOCOLS.values() if isinstance(target, p)), None)
    carried = tuple(c for c in _CARRIED if isinstance(target, c))
    extra: frozenset[str] = frozenset()
    if trait is None:  # no trait: the faulted methods and the name
        extra = frozenset(n for key in ("fail", "refuse", "stall") for n in injections.get(key) or ())
    key = (trait, carried, extra)
    cls = _CLASSES.get(key)
    if cls is None:
        methods: list[str] = sorted(extra)
        attributes: list[str] = [] if trait is not None else ["name"]
        for proto in (trait, *carried) if trait is not None else carried:
            m, a = _members(proto)
            methods += [x for x in m if x not in methods]
            attributes += [x for x in a if x not in attributes]
        namespace: dict[str, Any] = {n: _method(n) for n in methods}
        namespace.update({n: _attribute(n) for n in attributes})
        namespace["_methods"] = tuple(methods)
        namespace["_attributes"] = tuple(attributes)
        label = "".join(p.__name__ for p in (trait, *carried) if p is not None) or "Object"
        cls = _CLASSES[key] = type(f"Faulty{label}", (FaultInjector,), namespace)
    return cls


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
        inj = FaultInjector(impl.factory(ctx), trait=TRAIT_PROTOCOLS[trait], **injector)
        built.append(inj)
        return inj

    def register_hook(register: Callable[..., None]) -> None:
        register(f"faulty-{base}", factory, description=f"{base} with injected faults")

    register_hook.__name__ = hook
    plugin = type(f"Faulty_{trait}", (), {hook: staticmethod(hookimpl(register_hook)), "built": built})
    return f"faulty-{trait}-{base}", plugin


def shared_ring_statx(k: Any, path: str = "/") -> Any:
    """``statx(path)`` as a Tier 1 entry through the shared ring and the dispatcher, whatever lanes the
    instance has (a lane takes single calls; a batch always goes to the shared ring): the path an injected
    io_backend, completion sink or notifier fault is met on. The raw ``struct statx``; a failure raises."""
    batch = k.batch()
    batch.statx(path)
    (out,) = batch.run()
    if isinstance(out, BaseException):
        raise out
    return out
