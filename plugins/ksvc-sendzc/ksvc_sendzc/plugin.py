"""ksvc-sendzc's hook implementation."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _zc(ctx: BuildContext) -> Any:
    from ksvc_sendzc.feature import SendZeroCopy

    return SendZeroCopy(int(ctx.option("send_zc_min", 0)))


@hookimpl
def ksvc_register_io_feature(register: Any) -> None:
    """``send-zc``."""
    register("send-zc", _zc, description="sends as IORING_OP_SEND_ZC (option send_zc_min bytes)")
