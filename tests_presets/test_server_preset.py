"""The ``server`` preset (probe + basic + lazy + futex + ring + heap + mmap), end to end.

Collected only by the tox environments that install every plugin the preset needs.
"""

from __future__ import annotations

import asyncio
import os

import ksvc_host as ksvc
from ksvc_host import testing


def test_server_preset_resolves_to_the_seed_alias() -> None:
    with ksvc.open(preset="server") as k:
        names = dict(k.instance.selection.names)
        assert names == {"router": "probe", "io_backend": "basic", "worker_pool": "lazy", "notifier": "futex",
                         "completion_sink": "ring", "buffer_provider": "heap", "shared_page": "mmap"}  # fmt: skip
        assert k.instance.describe()["implementations"]["worker_pool"]["distribution"] == "ksvc-lazypool"


def test_server_preset_conforms() -> None:
    testing.check_instance(preset="server")
    testing.check_instance(preset="server", dispatcher="inline")


def test_server_preset_asyncio() -> None:
    async def main() -> None:
        async with ksvc.open_async(preset="server") as k:
            fd = await k.open("/proc/self/stat", os.O_RDONLY)
            assert await k.pread(fd, 5, 0) == os.pread(fd, 5, 0)
            await k.close(fd)

    asyncio.run(main())
