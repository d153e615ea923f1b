"""ksvc-sqpoll's hook implementation."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _sqpoll(ctx: BuildContext) -> Any:
    from ksvc_sqpoll.feature import SqpollFeature

    return SqpollFeature(
        idle_ms=int(ctx.option("sq_idle_ms", 1000)),
        cpu=ctx.option("sq_cpu"),
        assist=ctx.option("sq_assist", True),
        assist_backlog=ctx.option("sq_assist_backlog", 0),
    )


@hookimpl
def ksvc_register_io_feature(register: Any) -> None:
    """``sqpoll``: selected as ``io_backend="sqpoll"`` or combined, ``"sqpoll+fixed-files"``."""
    register(
        "sqpoll",
        _sqpoll,
        description="kernel thread polls the SQ (options sq_idle_ms, sq_cpu, sq_assist, sq_assist_backlog)",
    )
