"""The channel: submit ring, completion ring and shared page (docs/design.md §4).

:func:`open_channel` picks the device when ``/dev/ksvc`` exists and the
emulated channel otherwise; both expose the same :class:`Channel` surface.
"""

from ksvc_host.channel.base import Channel, open_channel
from ksvc_host.channel.ring import Ring, RingCorrupted

__all__ = ["Channel", "Ring", "RingCorrupted", "open_channel"]
