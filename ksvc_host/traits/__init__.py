"""The seven traits of KSVC as ``typing.Protocol`` classes.

Each module states one contract (:mod:`ksvc_host.traits.capabilities` and
:mod:`ksvc_host.traits.own_rings`: the optional capabilities the host
resolves once at build); the conformance kit in
:mod:`ksvc_host.testing` checks that an implementation honours it. Plugins
contribute named factories for these through the hookspecs in
:mod:`ksvc_host.hookspecs`.
"""

from ksvc_host.traits.buffer_provider import BufferHandle, BufferProvider
from ksvc_host.traits.capabilities import (
    AfterSetupFeature,
    AttachableCompletionSink,
    CancelAllIoBackend,
    ClosableBufferProvider,
    ExpressCompletionSink,
    ExpressIoBackend,
    ExpressRewriter,
    ExpressRewrites,
    FixedBuffersIoBackend,
    FixedFilesIoBackend,
    FixedFileTable,
    IoFeature,
    MultishotIoBackend,
    PipelinedIoBackend,
    QuietIoBackend,
    RingArgsFeature,
    SetupFlagsFeature,
    SqePreparer,
)
from ksvc_host.traits.completion_sink import CompletionSink
from ksvc_host.traits.io_backend import IoBackend, IoCompletion, SqeSpec
from ksvc_host.traits.notifier import Notifier
from ksvc_host.traits.own_rings import Lane, LaneBuilder, OwnRings
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
    "AfterSetupFeature",
    "AttachableCompletionSink",
    "BufferHandle",
    "BufferProvider",
    "CancelAllIoBackend",
    "CancellableWorkerPool",
    "ClosableBufferProvider",
    "CompletionSink",
    "ExpressCompletionSink",
    "ExpressIoBackend",
    "ExpressRewriter",
    "ExpressRewrites",
    "FixedBuffersIoBackend",
    "FixedFileTable",
    "FixedFilesIoBackend",
    "IoBackend",
    "IoCompletion",
    "IoFeature",
    "MultishotIoBackend",
    "Notifier",
    "Lane",
    "LaneBuilder",
    "OwnRings",
    "PipelinedIoBackend",
    "QuietIoBackend",
    "RingArgsFeature",
    "Route",
    "SetupFlagsFeature",
    "SharedPage",
    "SqePreparer",
    "SqeSpec",
    "SyscallRouter",
    "Tier",
    "WorkerPool",
]
