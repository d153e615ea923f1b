"""The dispatcher (docs/design.md §5), one module per part.

* :mod:`.turn` — :class:`Turn`: one pass of the loop (reap, take, route,
  flush, notify), and the drain that ends it; it knows nothing of who runs it.
* :mod:`.wakeup` — :class:`Wakeup`: the eventfd every producer of work writes.
* :mod:`.drivers` — :class:`ThreadDriver` (a thread of its own) and
  :class:`InlineDriver` (the callers run the turns), chosen once per instance.
* :mod:`.port` — :class:`DispatcherPort`: what a front end may call.
* :mod:`.dispatcher` — :class:`Dispatcher`: the three assembled.
"""

from ksvc_host.dispatch.dispatcher import MODES, Dispatcher
from ksvc_host.dispatch.drivers import InlineDriver, ThreadDriver
from ksvc_host.dispatch.port import DispatcherListener, DispatcherPort, InlineDriving
from ksvc_host.dispatch.turn import Turn
from ksvc_host.dispatch.wakeup import Wakeup

__all__ = [
    "MODES", "Dispatcher", "DispatcherListener", "DispatcherPort", "InlineDriver", "InlineDriving",
    "ThreadDriver", "Turn", "Wakeup",
]  # fmt: skip
