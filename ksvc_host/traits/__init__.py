"""The seven traits of KSVC as ``typing.Protocol`` classes.

Each module states one contract; the conformance kit in
:mod:`ksvc_host.testing` checks that an implementation honours it. Plugins
contribute named factories for these through the hookspecs in
:mod:`ksvc_host.hookspecs`.
"""

from ksvc_host.traits.buffer_provider import BufferHandle, BufferProvider
from ksvc_host.traits.completion_sink import CompletionSink
from ksvc_host.traits.io_backend import IoBackend, IoCompletion, SqeSpec
from ksvc_host.traits.notifier import Notifier
from ksvc_host.traits.own_rings import OwnRings, OwnRingSpec
from ksvc_host.traits.router import Route, SyscallRouter, Tier
from ksvc_host.traits.shared_page import SharedPage
from ksvc_host.traits.worker_pool import CancellableWorkerPool, WorkerPool

TRAITS: tuple[str, ...] = (
    "router",
    "io_backend",
    "worker_pool",
    "notifier",
    "completion_sink",
    "buffer_provider",
    "shared_page",
)
"""Trait keys, in build order-independent display order; also the selection keywords."""

__all__ = [
    "TRAITS",
    "BufferHandle",
    "BufferProvider",
    "CancellableWorkerPool",
    "CompletionSink",
    "IoBackend",
    "IoCompletion",
    "Notifier",
    "OwnRingSpec",
    "OwnRings",
    "Route",
    "SharedPage",
    "SqeSpec",
    "SyscallRouter",
    "Tier",
    "WorkerPool",
]
