"""The hooks plugins implement.

Every trait of docs/design.md §3 is one ``ksvc_register_*`` hook. A plugin
implements it by calling ``register(name, factory, description=...)`` once
per implementation it contributes::

    from ksvc_host import hookimpl

    @hookimpl
    def ksvc_register_worker_pool(register):
        register("lazy", LazyPool.from_context, description="grows on demand")

``factory(ctx)`` receives a :class:`ksvc_host.plugins.BuildContext` and
returns an object that satisfies the trait's Protocol in
:mod:`ksvc_host.traits`. Names are unique per trait across all installed
distributions.

Observer hooks (``ksvc_instance_created`` and friends) let a plugin add
metrics or tracing without touching the dispatcher.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "ksvc"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Any  # Callable[[str, Callable[[BuildContext], T]], None] with keyword ``description``


@hookspec
def ksvc_register_router(register: Register) -> None:
    """Contribute SyscallRouter implementations.

    The object built must satisfy :class:`ksvc_host.traits.SyscallRouter`:
    ``route(nr)`` is O(1) from a table built once; unknown numbers route to
    Tier 3. ``ctx.probe_opcodes()`` returns the opcodes the running kernel
    supports, for routers that probe.
    """


@hookspec
def ksvc_register_io_backend(register: Register) -> None:
    """Contribute IoBackend implementations (io_uring instances).

    Contract (:class:`ksvc_host.traits.IoBackend`): ``submit``/``flush``
    never block; a full SQ is back-pressure (``submit`` returns False);
    every accepted SQE yields a final CQE; ``shutdown`` drains.
    """


@hookspec
def ksvc_register_io_feature(register: Register) -> None:
    """Contribute io_uring features that combine with ``+`` (``"sqpoll+fixed-files"``).

    A feature factory receives the build context and returns an object with
    any of the capabilities of :mod:`ksvc_host.traits.capabilities`
    (``IoFeature``: ``name``; ``SetupFlagsFeature``: ``setup_flags(flags) ->
    flags``; ``RingArgsFeature``: ``ring_kwargs(kwargs) -> kwargs``;
    ``AfterSetupFeature``: ``after_setup(backend)``; ``SqePreparer``:
    ``prepare(user_data, sqe) -> sqe``, with ``ExpressRewriter`` to declare
    what it rewrites); the composite backend applies every selected
    feature, in the order named, around the basic ring.
    """


@hookspec
def ksvc_register_worker_pool(register: Register) -> None:
    """Contribute WorkerPool implementations.

    Contract (:class:`ksvc_host.traits.WorkerPool`): ``enqueue`` never
    blocks (full: returns False); each job completes exactly once; only
    syscalls ``ctx.allowed(nr)`` accepts are executed; ``shutdown`` drains.
    """


@hookspec
def ksvc_register_notifier(register: Register) -> None:
    """Contribute Notifier implementations.

    Contract (:class:`ksvc_host.traits.Notifier`): ``notify`` never blocks;
    notifications coalesce; ``wait`` consumes one.
    """


@hookspec
def ksvc_register_completion_sink(register: Register) -> None:
    """Contribute CompletionSink implementations.

    Contract (:class:`ksvc_host.traits.CompletionSink`): ``push`` returns
    False when full (the dispatcher holds the completion); one
    ``flush_and_notify`` per dispatcher loop wakes the consumer once.
    """


@hookspec
def ksvc_register_buffer_provider(register: Register) -> None:
    """Contribute BufferProvider implementations.

    Contract (:class:`ksvc_host.traits.BufferProvider`): ``acquire`` never
    blocks and may return None; memory is valid until ``release``.
    """


@hookspec
def ksvc_register_shared_page(register: Register) -> None:
    """Contribute SharedPage readers.

    Contract (:class:`ksvc_host.traits.SharedPage`): identity fields equal
    the direct syscalls in the calling process; statistics are the
    dispatcher's latest.
    """


@hookspec
def ksvc_instance_created(instance: Any) -> None:
    """Called once an instance is built and its dispatcher runs."""


@hookspec
def ksvc_instance_closing(instance: Any) -> None:
    """Called when an instance starts closing, before in-flight work drains."""


@hookspec
def ksvc_batch_dispatched(instance: Any, count: int) -> None:
    """Called after the dispatcher routed a batch of *count* submit entries.

    Called only when at least one plugin implements it, so it costs nothing
    otherwise.
    """
