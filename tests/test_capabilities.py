"""Optional capabilities are declared Protocols, resolved once at build; nothing probes by attribute name.

* which capability each shipped implementation has (a table);
* the host resolves them when the dispatcher and front end are built, and
  components lacking them take the plain path with results equal to
  ``os.*``;
* no module of ``ksvc_host`` or the plugins probes a component with
  ``getattr``/``hasattr`` outside a short allowlist.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host import traits as T
from ksvc_host.plugins import REGISTER_HOOKS, PluginManager
from ksvc_host.testing import FaultInjector
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec

ROOT = Path(__file__).resolve().parents[1]

IO_CAPABILITIES = (
    T.OwnRings, T.QuietIoBackend, T.PipelinedIoBackend, T.MultishotIoBackend, T.CancelAllIoBackend,
    T.FixedFilesIoBackend, T.FixedBuffersIoBackend, T.ExpressIoBackend,
)  # fmt: skip
SINK_CAPABILITIES = (T.ExpressCompletionSink, T.AttachableCompletionSink)
FEATURE_CAPABILITIES = (
    T.IoFeature, T.SetupFlagsFeature, T.RingArgsFeature, T.AfterSetupFeature, T.SqePreparer, T.ExpressRewriter,
)  # fmt: skip

_BASIC = {T.OwnRings, T.QuietIoBackend, T.PipelinedIoBackend, T.CancelAllIoBackend, T.ExpressIoBackend}


def _has(obj: object, capabilities: Iterable[type]) -> set[type]:
    return {c for c in capabilities if isinstance(obj, c)}


def _open(**selection: Any) -> Any:
    try:
        return ksvc.open(**selection)
    except (OSError, ksvc.KsvcError) as exc:
        pytest.skip(f"{selection} cannot be built here: {exc}")


# The table -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("io_backend", "expected"),
    [
        ("basic", _BASIC),
        ("fixed-files", _BASIC | {T.FixedFilesIoBackend}),
        ("fixed-buffers", _BASIC | {T.FixedBuffersIoBackend}),
        ("multishot-accept", _BASIC | {T.MultishotIoBackend}),
        ("send-zc", _BASIC),
        ("sqpoll", _BASIC),
    ],
)
def test_io_backends_have_the_capabilities_of_their_features(io_backend: str, expected: set[type]) -> None:
    with _open(io_backend=io_backend) as k:
        assert _has(k.instance.io_backend, IO_CAPABILITIES) == expected


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ("sqpoll", {T.IoFeature, T.SetupFlagsFeature, T.RingArgsFeature, T.AfterSetupFeature}),
        ("fixed-files", {T.IoFeature, T.AfterSetupFeature, T.SqePreparer}),
        ("fixed-buffers", {T.IoFeature, T.AfterSetupFeature}),
        ("multishot-accept", {T.IoFeature, T.AfterSetupFeature}),
        ("send-zc", {T.IoFeature, T.AfterSetupFeature, T.SqePreparer, T.ExpressRewriter}),
    ],
)
def test_io_features_declare_what_they_do(feature: str, expected: set[type]) -> None:
    with _open(io_backend=feature) as k:
        (built,) = k.instance.io_backend.features
        assert _has(built, FEATURE_CAPABILITIES) == expected


@pytest.mark.parametrize(
    ("sink", "expected"), [("ring", {T.ExpressCompletionSink}), ("direct-wake", {T.AttachableCompletionSink})]
)
def test_completion_sinks(sink: str, expected: set[type]) -> None:
    with _open(completion_sink=sink) as k:
        assert _has(k.instance.completion_sink, SINK_CAPABILITIES) == expected
        assert k._completer.direct is (T.AttachableCompletionSink in expected)


@pytest.mark.parametrize("provider", ["heap", "registered", "provided-ring"])
def test_no_shipped_buffer_provider_needs_closing(provider: str) -> None:
    with _open(buffer_provider=provider) as k:
        assert not isinstance(k.instance.buffer_provider, T.ClosableBufferProvider)


@pytest.mark.parametrize(("pool", "cancellable"), [("fixed", True), ("inline", True), ("lazy", True)])
def test_worker_pools(pool: str, cancellable: bool) -> None:
    with _open(worker_pool=pool) as k:
        assert isinstance(k.instance.worker_pool, T.CancellableWorkerPool) is cancellable


def test_express_rewrites_are_declared_when_a_preparer_is_added() -> None:
    from ksvc_basic.basic_iouring import BasicIoUring

    b = BasicIoUring(16)
    try:
        assert b.express_ring() is not None
        b.add_preparer(lambda u, s: s, T.ExpressRewrites(opcodes=frozenset({1})))
        assert b.express_ring().rewritten_opcodes == {1}  # type: ignore[union-attr]
        b.add_preparer(lambda u, s: s, T.ExpressRewrites(address_range=(4096, 8192)))
        ring = b.express_ring()
        assert ring is not None and (ring.exclude_lo, ring.exclude_hi) == (4096, 8192)
        b.add_completion_filter(lambda c: c, own_requests_only=True)
        assert b.express_ring() is not None
        b.add_preparer(lambda u, s: s, T.ExpressRewrites(address_range=(0, 4096)))
        assert b.express_ring() is None, "two rewritten ranges: the lane cannot leave both alone"
    finally:
        b.shutdown()
    b = BasicIoUring(16)
    try:
        b.add_preparer(lambda u, s: s)
        assert b.express_ring() is None, "an undeclared preparer may rewrite anything"
    finally:
        b.shutdown()
    b = BasicIoUring(16)
    try:
        b.add_completion_filter(lambda c: c)
        assert b.express_ring() is None, "a filter of any completion keeps CQEs from bypassing it"
    finally:
        b.shutdown()


# Resolved at build; the plain path without a capability -------------------------------------------


class PlainIoBackend:
    """The ``basic`` backend behind the IoBackend trait only: no capability at all."""

    name = "plain"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.capacity = inner.capacity

    def submit(self, user_data: int, sqe: SqeSpec) -> bool:
        return bool(self._inner.submit(user_data, sqe))

    def flush(self) -> int:
        return int(self._inner.flush())

    def poll_completions(self, max_count: int = 64) -> list[IoCompletion]:
        return list(self._inner.poll_completions(max_count))

    def cancel(self, user_data: int) -> bool:
        return bool(self._inner.cancel(user_data))

    def inflight(self) -> int:
        return int(self._inner.inflight())

    def probe_opcodes(self) -> frozenset[int]:
        return frozenset(self._inner.probe_opcodes())

    def set_wakeup_fd(self, fd: int) -> None:
        self._inner.set_wakeup_fd(fd)

    def shutdown(self) -> None:
        self._inner.shutdown()


class PlainSink:
    """The ``ring`` sink behind the CompletionSink trait only (no express lane into its ring)."""

    name = "plain"

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def push(self, corr_id: int, result: int, flags: int = 0) -> bool:
        return bool(self._inner.push(corr_id, result, flags))

    def push_batch(self, items: Iterable[tuple[int, int, int]]) -> int:
        return int(self._inner.push_batch(items))

    def flush_and_notify(self) -> None:
        self._inner.flush_and_notify()


def _plugin(trait: str, base: str, wrap: Callable[[Any], Any]) -> tuple[str, Any]:
    hook = REGISTER_HOOKS[trait]

    def register_hook(register: Callable[..., None]) -> None:
        register("plain", lambda ctx: wrap(ctx.plugins.get(trait, base).factory(ctx)), description="plain")

    register_hook.__name__ = hook
    return f"plain-{trait}", type(f"Plain_{trait}", (), {hook: staticmethod(ksvc.hookimpl(register_hook))})


@pytest.fixture
def data_file() -> Iterator[int]:
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(64 * 1024))
        f.flush()
        fd = os.open(f.name, os.O_RDONLY)
        try:
            yield fd
        finally:
            os.close(fd)


def _same_as_os(k: Any, fd: int) -> None:
    for off in (0, 4096, 60000):
        assert k.pread(fd, 4096, off) == os.pread(fd, 4096, off)
    assert k.fstat(fd).st_size == os.fstat(fd).st_size
    r, w = os.pipe()
    try:
        assert k.write(w, b"capabilities") == 12
        assert k.read(r, 100) == b"capabilities"
    finally:
        os.close(r)
        os.close(w)


def test_the_shipped_stack_resolves_its_capabilities_at_build(data_file: int) -> None:
    with ksvc.open(io_backend="basic", completion_sink="ring") as k:
        d = k.instance.dispatcher
        assert d.quiet is k.instance.io_backend and d.turn.cancel_all is k.instance.io_backend
        assert d.turn.multishot_accept is False and k.fixed_files is None
        _same_as_os(k, data_file)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_a_backend_without_capabilities_takes_the_plain_path(dispatcher: str, data_file: int) -> None:
    pm = PluginManager(extra_plugins=[_plugin("io_backend", "basic", PlainIoBackend)])
    with ksvc.open(plugins=pm, io_backend="plain", dispatcher=dispatcher) as k:
        assert _has(k.instance.io_backend, IO_CAPABILITIES) == set()
        d = k.instance.dispatcher
        assert d.quiet is None and d.turn.cancel_all is None and d.turn.express is None and not d.turn.multishot_accept
        assert k._completer.pipelined is False and k.fixed_files is None
        _same_as_os(k, data_file)


@pytest.mark.parametrize("dispatcher", ["thread", "inline"])
def test_a_sink_without_capabilities_takes_the_plain_path(dispatcher: str, data_file: int) -> None:
    pm = PluginManager(extra_plugins=[_plugin("completion_sink", "ring", PlainSink)])
    with ksvc.open(plugins=pm, completion_sink="plain", dispatcher=dispatcher) as k:
        assert _has(k.instance.completion_sink, SINK_CAPABILITIES) == set()
        assert k.instance.dispatcher.turn.express is None and not k._completer.direct
        _same_as_os(k, data_file)


def test_a_capability_gained_after_build_is_not_used() -> None:
    pm = PluginManager(extra_plugins=[_plugin("io_backend", "basic", PlainIoBackend)])
    with ksvc.open(plugins=pm, io_backend="plain", dispatcher="inline") as k:
        backend = k.instance.io_backend
        calls: list[bool] = []
        backend.set_completion_wakeups = calls.append  # now it looks like a QuietIoBackend
        backend.completions_ready = lambda: 0
        assert isinstance(backend, T.QuietIoBackend)
        assert k.fcntl(0, 1) >= 0
        assert calls == [], "capabilities are resolved once, when the dispatcher is built"


# The fault injector wraps the same surface ----------------------------------------------------------


@pytest.mark.parametrize("io_backend", ["basic", "fixed-files", "multishot-accept"])
def test_fault_injector_declares_the_capabilities_of_what_it_wraps(io_backend: str) -> None:
    with _open(io_backend=io_backend) as k:
        target = k.instance.io_backend
        wrapped = FaultInjector(target, fail={"flush": {99}})
        hidden = {T.QuietIoBackend, T.ExpressIoBackend}
        assert _has(wrapped, IO_CAPABILITIES) == _has(target, IO_CAPABILITIES) - hidden
        assert isinstance(wrapped, T.IoBackend) and wrapped.name == target.name
        assert not hasattr(wrapped, "features"), "only the trait's and the capabilities' members are wrapped"
    with _open(completion_sink="direct-wake") as k:
        assert isinstance(FaultInjector(k.instance.completion_sink), T.AttachableCompletionSink)
    with _open(completion_sink="ring") as k:
        assert not isinstance(FaultInjector(k.instance.completion_sink), T.ExpressCompletionSink)


# No probing by name -----------------------------------------------------------------------------

ALLOWED = {
    ("ksvc_host/plugins.py", 'getattr(plugin, "__name__", repr(plugin))'): "a plugin module's display name",
    ("ksvc_host/plugins.py", "getattr(self.pm.hook, hook_name)"): "pluggy hook lookup",
    ("ksvc_host/traits/io_backend.py", "getattr(self, k)"): "SqeSpec.__repr__ over its slots",
    ("plugins/ksvc-sendzc/ksvc_sendzc/feature.py", "getattr(sqe, name)"): "copying SqeSpec's slots",
    ("ksvc_host/testing/kit.py", 'getattr(obj, "name", type(obj).__name__)'): "naming a broken implementation",
    ("ksvc_host/testing/faults.py", "getattr(target, name)"): "the injector's wrappers, built from Protocol members",
    ("ksvc_host/bench/harness.py", "getattr(a, metric), getattr(b, metric)"): "a benchmark metric by name",
}
_PROBE = re.compile(r"\b(?:getattr|hasattr)\(")


def _sources() -> Iterator[Path]:
    yield from sorted((ROOT / "ksvc_host").rglob("*.py"))
    for pkg in sorted((ROOT / "plugins").glob("*/ksvc_*")):
        yield from sorted(pkg.rglob("*.py"))


def test_nothing_probes_components_by_attribute_name() -> None:
    found = []
    used = set()
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not _PROBE.search(line):
                continue
            key = next((k for k in ALLOWED if k[0] == rel and k[1] in line), None)
            if key is None:
                found.append(f"{rel}:{n}: {line.strip()}")
            else:
                used.add(key)
    assert not found, "probing by name; declare a capability Protocol instead:\n" + "\n".join(found)
    assert used == set(ALLOWED), f"allowlist entries no longer needed: {set(ALLOWED) - used}"
