"""ksvc-fixedfiles's hook implementation."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl
from ksvc_host.instance import BuildContext


def _fixed(ctx: BuildContext) -> Any:
    from ksvc_fixedfiles.feature import FixedFiles

    return FixedFiles(int(ctx.option("fixed_file_slots", 64)))


@hookimpl
def ksvc_register_io_feature(register: Any) -> None:
    """``fixed-files``."""
    register("fixed-files", _fixed, description="sparse registered file table (option fixed_file_slots)")
