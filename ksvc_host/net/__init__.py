"""Networking on KSVC for asyncio: servers and connections whose accept, recv and send are KSVC entries.

``start_server``/``open_connection`` give asyncio's own ``StreamReader`` and
``StreamWriter`` (``read``, ``readexactly``, ``readuntil``, ``write``,
``drain``, ``close``, ``wait_closed``) over a :class:`KsvcTransport`;
``create_server``/``create_connection`` take a Protocol factory instead.
"""

from ksvc_host.net.server import (
    Server,
    create_connection,
    create_server,
    open_connection,
    shared_instance,
    start_server,
)
from ksvc_host.net.transport import KsvcTransport

__all__ = [
    "KsvcTransport",
    "Server",
    "create_connection",
    "create_server",
    "open_connection",
    "shared_instance",
    "start_server",
]
