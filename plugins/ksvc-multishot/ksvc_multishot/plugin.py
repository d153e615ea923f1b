"""ksvc-multishot's hook implementation."""

from __future__ import annotations

from typing import Any

from ksvc_host import hookimpl


@hookimpl
def ksvc_register_io_feature(register: Any) -> None:
    """``multishot-accept``."""
    from ksvc_multishot.feature import MultishotAccept

    register("multishot-accept", lambda ctx: MultishotAccept(), description="one accept SQE, a CQE per connection")
