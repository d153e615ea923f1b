"""ksvc-lazypool's hook implementation."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _lazy(ctx: BuildContext) -> Any:
    from ksvc_lazypool.pool import LazyPool

    return LazyPool(
        max_workers=ctx.option("max_workers"),
        min_workers=ctx.option("min_workers", 1),
        idle_timeout=ctx.option("idle_timeout", 2.0),
        queue_size=ctx.option("worker_queue", 4096),
        allowed=ctx.allowed,
    )


@hookimpl
def ksvc_register_worker_pool(register: Any) -> None:
    """``lazy``."""
    register("lazy", _lazy, description="1 thread, grows while all are busy, shrinks after idle_timeout")
