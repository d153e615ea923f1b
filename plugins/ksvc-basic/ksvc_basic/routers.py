"""The two routers: ``probe`` asks the running kernel, ``static`` uses a named kernel's table."""

from __future__ import annotations

from ksvc_host.abi.io_uring import opcodes_for_kernel
from ksvc_host.routing import TableRouter


class ProbeRouter(TableRouter):
    """Routes by the opcodes the running kernel reports (IORING_REGISTER_PROBE).

    A kernel upgrade that adds an opcode moves its syscalls from Tier 2 to
    Tier 1 with no code change.
    """

    name = "probe"

    def __init__(self, supported: frozenset[int]) -> None:
        super().__init__(supported, description=f"probed: {len(supported)} opcodes supported")


class StaticRouter(TableRouter):
    """Routes by the opcode set of a named kernel release (``"6.8"``, ``"6.11"``, ``"newest"``)."""

    name = "static"

    def __init__(self, kernel: str = "newest") -> None:
        self.kernel = kernel
        super().__init__(opcodes_for_kernel(kernel), description=f"static table for kernel {kernel}")
