"""The ``multishot-accept`` feature: one ACCEPT SQE, one CQE per connection.

A submit entry for ``accept``/``accept4`` carrying the MULTISHOT flag
becomes one ACCEPT with IORING_ACCEPT_MULTISHOT; each connection arrives
as a completion flagged MORE, and the series ends with a completion
without MORE (on error or cancellation). Front ends expose it as
``Ksvc.accept_iter(fd)``.
"""

from __future__ import annotations

from typing import Any

from ksvc_host.abi.io_uring import IoringOp


class MultishotAccept:
    """Feature ``multishot-accept``: marks the backend as able to run multishot accepts."""

    name = "multishot-accept"

    def after_setup(self, backend: Any) -> None:
        """Check the kernel has it (it came with the SOCKET opcode, 5.19) and switch it on."""
        if IoringOp.SOCKET not in backend.probe_opcodes():
            raise OSError(95, "multishot accept needs Linux 5.19 or later")
        backend.multishot_accept = True  # the backend is now a MultishotIoBackend
