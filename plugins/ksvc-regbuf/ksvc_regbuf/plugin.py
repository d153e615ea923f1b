"""ksvc-regbuf's hook implementations."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext
from ksvc_host.traits.capabilities import FixedBuffersIoBackend


def _registered(ctx: BuildContext) -> Any:
    from ksvc_regbuf.registered import RegisteredBuffers

    backend = ctx.io_backend
    if isinstance(backend, FixedBuffersIoBackend):  # the fixed-buffers feature already registered a pool
        return backend.fixed_buffers
    return RegisteredBuffers(backend, count=int(ctx.option("buffers", 64)), size=int(ctx.option("buffer_size", 65536)))


def _provided(ctx: BuildContext) -> Any:
    from ksvc_regbuf.provided import ProvidedBufferRing

    return ProvidedBufferRing(
        ctx.io_backend, count=int(ctx.option("provided_buffers", 64)), size=int(ctx.option("provided_size", 16384))
    )


class _FixedBuffersFeature:
    """Feature ``fixed-buffers``: register a pool at ring set-up and use it for reads and writes."""

    name = "fixed-buffers"

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def after_setup(self, backend: Any) -> None:
        from ksvc_regbuf.registered import RegisteredBuffers

        backend.fixed_buffers = RegisteredBuffers(backend, count=self.count, size=self.size)


@hookimpl
def ksvc_register_buffer_provider(register: Any) -> None:
    """``registered`` and ``provided-ring``."""
    register("registered", _registered, description="pool pinned with IORING_REGISTER_BUFFERS; READ_FIXED/WRITE_FIXED")
    register("provided-ring", _provided, description="io_uring picks the receive buffer from a registered ring")


@hookimpl
def ksvc_register_io_feature(register: Any) -> None:
    """``fixed-buffers``."""
    register(
        "fixed-buffers",
        lambda ctx: _FixedBuffersFeature(int(ctx.option("buffers", 64)), int(ctx.option("buffer_size", 65536))),
        description="registers a buffer pool with the ring (options buffers, buffer_size)",
    )
