"""Building an instance: one implementation per trait, composed around a channel.

:func:`build_instance` resolves the selection, builds each trait through
its plugin's factory (in dependency order: notifier, io_uring features and
backend, router, worker pool, completion sink, buffer provider, shared
page), wires the dispatcher, and starts it. A factory that fails is
reported by trait, name and distribution; whatever was already built is
released.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ksvc_host.abi import layout as L
from ksvc_host.channel import Channel, open_channel
from ksvc_host.dispatch import MODES, Dispatcher
from ksvc_host.errors import ClosedError, KsvcError, SelectionError
from ksvc_host.plugins import Implementation, PluginManager, get_plugin_manager
from ksvc_host.selection import Selection, resolve
from ksvc_host.traits import (
    TRAITS,
    BufferProvider,
    ClosableBufferProvider,
    CompletionSink,
    IoBackend,
    Notifier,
    SharedPage,
    SyscallRouter,
    Tier,
    WorkerPool,
)

HOST_OPTIONS = ("submit_entries", "complete_entries", "dispatcher", "device", "lanes", "options")
"""Keywords of :func:`ksvc_host.open` besides the trait names and ``preset``."""


@dataclass
class BuildContext:
    """What a plugin factory gets: the channel, options, and what is already built."""

    channel: Channel
    selection: Selection
    plugins: PluginManager
    options: Mapping[str, Any] = field(default_factory=dict)
    io_features: list[Any] = field(default_factory=list)
    notifier: Notifier | None = None
    io_backend: IoBackend | None = None
    router: SyscallRouter | None = None

    def option(self, name: str, default: Any = None) -> Any:
        """A plugin option passed as ``ksvc.open(options={name: value})``."""
        return self.options.get(name, default)

    def probe_opcodes(self) -> frozenset[int]:
        """Opcodes the running kernel supports, from the io backend."""
        if self.io_backend is None:
            raise KsvcError("probe_opcodes() needs the io backend, which is built before the router")
        return self.io_backend.probe_opcodes()

    def allowed(self, nr: int) -> bool:
        """True when the router sends *nr* to Tier 1 or 2: what a worker may execute."""
        if self.router is None:
            return False
        return self.router.route(nr).tier in (Tier.IO_URING, Tier.WORKER)


class Attached(Protocol):
    """Something a front end runs beside the dispatcher (thread lanes), closed with the instance."""

    def begin_close(self, deadline: float) -> None:
        """Take no new work; cancel what still waits at monotonic time *deadline*."""
        ...

    def finish_close(self) -> None:
        """Release everything (bounded: what the kernel still holds is kept, never freed)."""
        ...


class Instance:
    """A running composition of the seven traits around one channel and dispatcher."""

    def __init__(self) -> None:
        self.selection: Selection
        self.plugins: PluginManager
        self.channel: Channel
        self.router: SyscallRouter
        self.io_backend: IoBackend
        self.worker_pool: WorkerPool
        self.notifier: Notifier
        self.completion_sink: CompletionSink
        self.buffer_provider: BufferProvider
        self.shared_page: SharedPage
        self.dispatcher: Dispatcher
        self.implementations: dict[str, Implementation] = {}
        self.pid = os.getpid()
        self._generation = _fork_generation
        self.closed = False
        self._close_lock = threading.Lock()
        self._attached: list[Attached] = []
        self.lanes = True
        """Whether front ends give calling threads lanes of their own (``ksvc.open(lanes=False)``: never)."""

    def attach(self, part: Attached) -> None:
        """Have *part* (a front end's thread lanes) closed with the instance, drained in the same time."""
        self._attached.append(part)

    def check_usable(self) -> None:
        """Raise :class:`ClosedError` if closed or inherited through ``fork()``."""
        if self._generation != _fork_generation:
            raise ClosedError(
                f"this KSVC instance belongs to process {self.pid}, not to this forked child "
                f"{os.getpid()}; open a new one in the child with ksvc.open()"
            )
        if self.closed:
            raise ClosedError("this KSVC instance is closed; open a new one with ksvc.open()")

    def describe(self) -> dict[str, Any]:
        """Selection, distributions and channel kind, JSON-ready."""
        return {
            "preset": self.selection.preset,
            "channel": self.channel.kind,
            "dispatcher": self.dispatcher.mode,
            "implementations": {
                t: {"name": self.selection.names[t], "distribution": impl.distribution}
                for t, impl in self.implementations.items()
            },
            "io_features": list(self.selection.io_features),
        }

    def close(self, timeout: float = 5.0) -> None:
        """Drain in-flight work, then stop the pool, the ring and the channel. Idempotent."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        if self._generation != _fork_generation:
            return  # a forked child must not tear down its parent's rings
        self.plugins.pm.hook.ksvc_instance_closing(instance=self)
        deadline = time.monotonic() + timeout
        for part in self._attached:
            part.begin_close(deadline)
        try:
            self.dispatcher.stop(timeout)
            for part in self._attached:
                part.finish_close()
        finally:
            _close_quietly(self.worker_pool.shutdown)
            _close_quietly(self.io_backend.shutdown)
            _close_quietly(self.notifier.close)
            _close_quietly(self.dispatcher.close)
            if isinstance(self.buffer_provider, ClosableBufferProvider):
                _close_quietly(self.buffer_provider.close)
            _INSTANCES.discard(self)
        # The channel stays mapped until the front end has taken the last completions from it;
        # it then closes it. Later use meets ClosedError before any access to the memory.


def _release(trait: str, obj: Any) -> None:
    """Free a component built before a later one failed: what its trait (or capability) declares for that."""
    if trait in ("io_backend", "worker_pool"):
        _close_quietly(obj.shutdown)
    elif trait == "notifier":
        _close_quietly(obj.close)
    elif trait == "buffer_provider" and isinstance(obj, ClosableBufferProvider):
        _close_quietly(obj.close)


def _close_quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


_INSTANCES: weakref.WeakSet[Instance] = weakref.WeakSet()


def _build(impl: Implementation, ctx: BuildContext) -> Any:
    try:
        return impl.factory(ctx)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"{impl.trait} {impl.name!r} ({impl.distribution}) could not start: {exc.strerror or exc}",
        ) from exc
    except KsvcError:
        raise
    except Exception as exc:
        raise KsvcError(
            f"{impl.trait} {impl.name!r} from {impl.distribution} failed to build: {type(exc).__name__}: {exc}"
        ) from exc


def _impl(pm: PluginManager, trait: str, name: str) -> Implementation:
    impl = pm.get(trait, name)
    if impl is None:  # resolve() checked; a plugin may have vanished since
        raise SelectionError(f"no {trait} named {name!r}")
    return impl


def build_instance(
    *,
    preset: str | None = None,
    plugins: PluginManager | None = None,
    submit_entries: int = 256,
    complete_entries: int = 1024,
    dispatcher: str = "thread",
    device: str | None = None,
    lanes: bool = True,
    options: Mapping[str, Any] | None = None,
    **names: str | None,
) -> Instance:
    """Resolve, build and start an instance (see :func:`ksvc_host.open`)."""
    from ksvc_host import fastpath

    fastpath.note_once()  # the compiled loops failed to build: say so, once per process
    if not isinstance(lanes, bool):
        raise SelectionError(f"lanes must be True or False, got {lanes!r}")
    if dispatcher not in MODES:
        raise SelectionError(f"dispatcher must be 'thread' or 'inline', got {dispatcher!r}")
    unknown = set(names) - set(TRAITS)
    if unknown:
        raise SelectionError(
            f"unknown keyword(s) {', '.join(sorted(unknown))}; selection keywords are "
            f"{', '.join(TRAITS)}, preset; options are {', '.join(HOST_OPTIONS)}"
        )
    pm = plugins or get_plugin_manager()
    selection = resolve(pm, preset, **names)
    L.check_ring_entries(submit_entries, "submit_entries")
    L.check_ring_entries(complete_entries, "complete_entries")

    inst = Instance()
    inst.selection, inst.plugins = selection, pm
    inst.lanes = lanes
    inst.channel = open_channel(submit_entries, complete_entries, device=device)
    ctx = BuildContext(inst.channel, selection, pm, dict(options or {}))
    built: list[tuple[str, Any]] = []
    try:

        def make(trait: str) -> Any:
            impl = _impl(pm, trait, selection.io_base if trait == "io_backend" else selection.names[trait])
            obj = _build(impl, ctx)
            inst.implementations[trait] = impl
            built.append((trait, obj))
            return obj

        inst.notifier = ctx.notifier = make("notifier")
        ctx.io_features = [_build(_impl(pm, "io_feature", f), ctx) for f in selection.io_features]
        inst.io_backend = ctx.io_backend = make("io_backend")
        inst.router = ctx.router = make("router")
        inst.worker_pool = make("worker_pool")
        inst.completion_sink = make("completion_sink")
        inst.buffer_provider = make("buffer_provider")
        inst.shared_page = make("shared_page")
        inst.dispatcher = Dispatcher(
            channel=inst.channel,
            router=inst.router,
            io_backend=inst.io_backend,
            worker_pool=inst.worker_pool,
            sink=inst.completion_sink,
            mode=dispatcher,
            on_batch=_batch_observer(pm, inst),
        )
    except BaseException:
        for trait, obj in reversed(built):
            _release(trait, obj)
        inst.channel.close()
        raise
    inst.dispatcher.start()
    _INSTANCES.add(inst)
    pm.pm.hook.ksvc_instance_created(instance=inst)
    return inst


def _batch_observer(pm: PluginManager, inst: Instance) -> Any:
    if not pm.observers_for("ksvc_batch_dispatched"):
        return None
    hook = pm.pm.hook.ksvc_batch_dispatched
    return lambda count: hook(instance=inst, count=count)


_fork_generation = 0


def _after_fork_in_child() -> None:
    # The child shares the parent's rings (MAP_SHARED): a new generation makes every
    # inherited instance refuse use, so nothing in the child submits into the parent's channel.
    global _fork_generation
    _fork_generation += 1
    _INSTANCES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
