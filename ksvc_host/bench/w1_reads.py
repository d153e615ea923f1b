"""W1: random 4 KiB reads of a page-cached 64 MiB file, at queue depth 1 and 64.

Every contender reads the same offsets of the same file, warmed into the
page cache first; a sample of each contender's results is compared with
``os.pread`` before it is timed. Queue depth 64 means 64 reads in flight
at once, in the way each contender offers it: 64 concurrent tasks for the
asyncio contenders, 64 SQEs per submission for the liburing binding, a
bulk of 64 for KSVC (``pread_many``), a stream with 64 reads in flight
(``pread_iter``, blocking and ``async for``), and, for comparison, KSVC's
asyncio front end with 64 tasks awaiting one read each.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections.abc import Sequence
from typing import Any

import ksvc_host as ksvc
from ksvc_host.bench.harness import Absent, Contender, Report, Target

FILE_SIZE = 64 << 20
BLOCK = 4096
DEPTHS = (1, 64)
PRESETS = ("default", "server")


class Data:
    """The file and the offsets every contender reads."""

    def __init__(self, ops: int, directory: str | None = None, seed: int = 1) -> None:
        self.dir = tempfile.mkdtemp(prefix="ksvc-bench-", dir=directory)
        self.path = os.path.join(self.dir, "w1.dat")
        rng = random.Random(seed)
        with open(self.path, "wb") as f:
            for _ in range(FILE_SIZE // (1 << 20)):
                f.write(rng.randbytes(1 << 20))
        self.fd = os.open(self.path, os.O_RDONLY)
        self.offsets = [rng.randrange(FILE_SIZE // BLOCK) * BLOCK for _ in range(ops)]
        self.warm()

    def warm(self) -> None:
        """Read the whole file (twice) so every contender finds it in the page cache."""
        for _ in range(2):
            for off in range(0, FILE_SIZE, 1 << 20):
                os.pread(self.fd, 1 << 20, off)

    def check(self, offsets: Sequence[int], got: list[Any]) -> str | None:
        """``None`` when *got* equals ``os.pread`` at each offset."""
        if len(got) != len(offsets):
            return f"{len(got)} results for {len(offsets)} reads"
        for i, off in enumerate(offsets):
            if bytes(got[i]) != os.pread(self.fd, BLOCK, off):
                return f"read {i} (offset {off}) differs from os.pread"
        return None

    def close(self) -> None:
        """Remove the file."""
        os.close(self.fd)
        os.unlink(self.path)
        os.rmdir(self.dir)


def _chunks(items: Sequence[int], n: int) -> list[Sequence[int]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# -- baselines ---------------------------------------------------------------------------------


class OsPread(Contender):
    """A plain ``os.pread`` loop (synchronous: its depth is always 1)."""

    name = "os.pread loop"

    def __init__(self, data: Data) -> None:
        self.fd = data.fd

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        fd, pread = self.fd, os.pread
        if keep:
            return [pread(fd, BLOCK, o) for o in items]
        for o in items:
            pread(fd, BLOCK, o)  # each result dropped at once, as a program that uses it and moves on
        return None


class OsPreadvInto(Contender):
    """``os.preadv`` into one reused buffer: no allocation per read (the tightest plain-Python loop)."""

    name = "os.preadv loop (reused buffer)"

    def __init__(self, data: Data) -> None:
        self.fd = data.fd

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        fd, preadv = self.fd, os.preadv
        buf = bytearray(BLOCK)
        bufs = [buf]
        out = []
        for o in items:
            preadv(fd, bufs, o)
            if keep:
                out.append(bytes(buf))
        return out if keep else None


class _AsyncContender(Contender):
    """Runs ``_main(items)`` on an event loop of its own."""

    depth = 1

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        out: list[Any] | None = [None] * len(items) if keep else None
        self.loop.run_until_complete(self._main(items, out))
        return out

    async def _main(self, items: Sequence[int], out: list[Any] | None) -> None:
        async def lane(start: int) -> None:
            for i in range(start, len(items), self.depth):
                r = await self._one(items[i])
                if out is not None:
                    out[i] = r

        await asyncio.gather(*(lane(s) for s in range(min(self.depth, len(items)))))

    async def _one(self, offset: int) -> Any:
        raise NotImplementedError

    def teardown(self) -> None:
        self.loop.close()


class ToThread(_AsyncContender):
    """``asyncio.to_thread(os.pread)``, *depth* tasks."""

    def __init__(self, data: Data, depth: int) -> None:
        self.fd, self.depth = data.fd, depth
        self.name = "asyncio.to_thread(os.pread)"

    async def _one(self, offset: int) -> Any:
        return await asyncio.to_thread(os.pread, self.fd, BLOCK, offset)


class Aiofiles(_AsyncContender):
    """aiofiles: one open file per task, seek then read."""

    def __init__(self, data: Data, depth: int) -> None:
        self.path, self.depth = data.path, depth
        self.name = "aiofiles"

    def setup(self) -> None:
        try:
            import aiofiles  # noqa: F401
        except ImportError:
            raise Absent("aiofiles is not installed (pip install 'ksvc-host[bench]')") from None
        super().setup()

    async def _main(self, items: Sequence[int], out: list[Any] | None) -> None:
        import aiofiles

        async def lane(start: int) -> None:
            async with aiofiles.open(self.path, "rb", buffering=0) as f:
                for i in range(start, len(items), self.depth):
                    await f.seek(items[i])
                    r = await f.read(BLOCK)
                    if out is not None:
                        out[i] = r

        await asyncio.gather(*(lane(s) for s in range(min(self.depth, len(items)))))


class Liburing(Contender):
    """The liburing Python binding: *depth* SQEs per submission, one wait for all of them."""

    def __init__(self, data: Data, depth: int) -> None:
        self.fd, self.depth = data.fd, depth
        self.name = "liburing binding"

    def setup(self) -> None:
        try:
            import liburing
        except ImportError:
            raise Absent("the liburing binding is not installed (pip install 'ksvc-host[bench]')") from None
        self.lu = liburing
        self.ring = liburing.Ring()
        self.cqe = liburing.Cqe()
        liburing.io_uring_queue_init(max(8, 2 * self.depth), self.ring)
        self.bufs = [bytearray(BLOCK) for _ in range(self.depth)]

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        lu, ring, cqe, fd, bufs = self.lu, self.ring, self.cqe, self.fd, self.bufs
        out: list[Any] = []
        for chunk in _chunks(items, self.depth):
            for i, off in enumerate(chunk):
                sqe = lu.io_uring_get_sqe(ring)
                lu.io_uring_prep_read(sqe, fd, bufs[i], off)
                lu.io_uring_sqe_set_data64(sqe, i)
            lu.io_uring_submit_and_wait(ring, len(chunk))
            res = [0] * len(chunk)
            got = 0
            while got < len(chunk):
                lu.io_uring_wait_cqe_nr(ring, cqe, len(chunk) - got)
                ready = lu.io_uring_cq_ready(ring)
                for j in range(ready):
                    c = cqe[j]
                    res[c.user_data] = c.res
                lu.io_uring_cq_advance(ring, ready)
                got += ready
            # bytes per read, as os.pread gives
            data = [bytes(bufs[i][:r]) for i, r in enumerate(res)]
            if keep:
                out.extend(data)
        return out if keep else None

    def teardown(self) -> None:
        self.lu.io_uring_queue_exit(self.ring)


# -- KSVC ------------------------------------------------------------------------------------------


def _open_kwargs(preset: str) -> dict[str, Any]:
    return {"preset": preset}


def _absent_if_unavailable(preset: str, exc: Exception) -> Absent:
    return Absent(f"preset {preset!r} cannot be built here: {exc}")


class KsvcBatch(Contender):
    """KSVC's blocking API: ``pread`` one at a time (depth 1), ``pread_many`` of *depth* (bulk)."""

    def __init__(self, data: Data, depth: int, preset: str) -> None:
        self.fd, self.depth, self.preset = data.fd, depth, preset
        self.name = f"ksvc batch ({preset})"

    def setup(self) -> None:
        try:
            self.k = ksvc.open(**_open_kwargs(self.preset))
        except (LookupError, ValueError) as exc:
            raise _absent_if_unavailable(self.preset, exc) from exc

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        k, fd = self.k, self.fd
        out: list[Any] = []
        if self.depth == 1:
            for o in items:
                r = k.pread(fd, BLOCK, o)
                if keep:
                    out.append(r)
        else:
            for chunk in _chunks(items, self.depth):
                rs = k.pread_many(fd, BLOCK, chunk)
                if keep:
                    out += rs
        return out if keep else None

    def teardown(self) -> None:
        self.k.close()


class KsvcStream(KsvcBatch):
    """KSVC's blocking API as a stream: ``pread_iter`` over every offset, *depth* reads in flight."""

    def __init__(self, data: Data, depth: int, preset: str) -> None:
        super().__init__(data, depth, preset)
        self.name = f"ksvc pread_iter ({preset})"

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        stream = self.k.pread_iter(self.fd, BLOCK, items, depth=self.depth)
        if keep:
            return list(stream)
        for _ in stream:  # each result dropped at once, as the os.pread loop does
            pass
        return None


class KsvcBatchVariant(KsvcBatch):
    """``ksvc batch (default)`` with part of the fast path switched off, to show what that part is worth."""

    def __init__(self, data: Data, depth: int, *, pure: bool = False, no_express: bool = False) -> None:
        super().__init__(data, depth, "default")
        self.pure, self.no_express = pure, no_express
        self.name = "ksvc batch (default, pure-Python loops)" if pure else "ksvc batch (default, no express lane)"

    def setup(self) -> None:
        from ksvc_host import fastpath
        from ksvc_host.dispatch.turn import ENV_NO_EXPRESS

        fastpath.select(pure=self.pure)
        old = os.environ.get(ENV_NO_EXPRESS)
        if self.no_express:
            os.environ[ENV_NO_EXPRESS] = "1"
        try:
            super().setup()  # the instance keeps the loops and the lane chosen now
        finally:
            fastpath.select()
            if old is None:
                os.environ.pop(ENV_NO_EXPRESS, None)
            else:
                os.environ[ENV_NO_EXPRESS] = old


class KsvcInto(KsvcBatch):
    """KSVC's blocking API into one reused buffer: ``preadinto_many`` of *depth* (as ``os.preadv`` above)."""

    def __init__(self, data: Data, depth: int, preset: str) -> None:
        super().__init__(data, depth, preset)
        self.name = f"ksvc preadinto_many, reused buffer ({preset})"

    def run(self, items: Sequence[int], keep: bool) -> list[Any] | None:
        k, fd, depth = self.k, self.fd, self.depth
        buf = bytearray(BLOCK * depth)
        out: list[Any] = []
        for chunk in _chunks(items, depth):
            counts = k.preadinto_many(fd, buf, BLOCK, chunk)
            if keep:
                out += [bytes(buf[i * BLOCK : i * BLOCK + c]) for i, c in enumerate(counts)]
        return out if keep else None


class KsvcAsync(_AsyncContender):
    """KSVC's asyncio front end: ``await pread`` per task, or ``await pread_many`` of *depth* (bulk)."""

    def __init__(self, data: Data, depth: int, preset: str, *, bulk: bool, stream: bool = False) -> None:
        self.fd, self.depth, self.preset, self.bulk, self.stream = data.fd, depth, preset, bulk, stream
        kind = "pread_iter" if stream else "bulk" if bulk else "per-op tasks"
        self.name = f"ksvc asyncio ({preset})" if depth == 1 else f"ksvc asyncio {kind} ({preset})"

    def setup(self) -> None:
        super().setup()
        try:
            self.k = self.loop.run_until_complete(self._open())
        except (LookupError, ValueError) as exc:
            self.loop.close()
            raise _absent_if_unavailable(self.preset, exc) from exc

    async def _open(self) -> Any:
        return await ksvc.open_async(**_open_kwargs(self.preset))

    async def _main(self, items: Sequence[int], out: list[Any] | None) -> None:
        if self.stream:
            i = 0
            async for data in self.k.pread_iter(self.fd, BLOCK, items, depth=self.depth):
                if out is not None:
                    out[i] = data
                i += 1
            return None
        if not self.bulk:
            return await super()._main(items, out)
        i = 0
        for chunk in _chunks(items, self.depth):
            got = await self.k.pread_many(self.fd, BLOCK, chunk)
            if out is not None:
                out[i : i + len(got)] = got
            i += len(got)
        return None

    async def _one(self, offset: int) -> Any:
        return await self.k.pread(self.fd, BLOCK, offset)

    def teardown(self) -> None:
        self.loop.run_until_complete(self.k.aclose())
        super().teardown()


class KsvcAsyncInto(KsvcAsync):
    """KSVC's asyncio front end into one reused buffer: ``await preadinto_many`` of *depth*."""

    def __init__(self, data: Data, depth: int, preset: str) -> None:
        super().__init__(data, depth, preset, bulk=True)
        self.name = f"ksvc asyncio preadinto_many, reused buffer ({preset})"

    async def _main(self, items: Sequence[int], out: list[Any] | None) -> None:
        buf = bytearray(BLOCK * self.depth)
        i = 0
        for chunk in _chunks(items, self.depth):
            counts = await self.k.preadinto_many(self.fd, buf, BLOCK, chunk)
            if out is not None:
                out[i : i + len(counts)] = [bytes(buf[j * BLOCK : j * BLOCK + c]) for j, c in enumerate(counts)]
            i += len(counts)


def contenders(data: Data, depth: int) -> list[Contender]:
    """Everything W1 measures at *depth*, the baseline first."""
    out: list[Contender] = [OsPread(data), ToThread(data, depth), Aiofiles(data, depth), Liburing(data, depth)]
    if depth > 1:
        out.insert(1, OsPreadvInto(data))
    for preset in PRESETS:
        out.append(KsvcBatch(data, depth, preset))
        if depth > 1:
            out.append(KsvcStream(data, depth, preset))
            out.append(KsvcInto(data, depth, preset))
            if preset == "default":
                out.append(KsvcBatchVariant(data, depth, pure=True))
                out.append(KsvcBatchVariant(data, depth, no_express=True))
        out.append(KsvcAsync(data, depth, preset, bulk=depth > 1))
        if depth > 1:
            out.append(KsvcAsyncInto(data, depth, preset))
            out.append(KsvcAsync(data, depth, preset, bulk=False, stream=True))
            out.append(KsvcAsync(data, depth, preset, bulk=False))
    return out


def targets() -> list[Target]:
    """The issue's W1 targets, at queue depth 64, for the streaming form of each front end.

    ``pread_iter`` is how both front ends read many blocks at a bounded
    depth; the bulk rows (``pread_many`` of 64 per call) are in the tables
    beside them.
    """
    c = "W1/qd64/"

    def t(text: str, num: str, den: str, minimum: float) -> Target:
        return Target(f"W1 qd64: {text}", c + num, c + den, minimum)

    return [
        t("ksvc asyncio, pread_iter (server) >= 15x asyncio.to_thread", "ksvc asyncio pread_iter (server)",
          "asyncio.to_thread(os.pread)", 15.0),
        t("ksvc asyncio, pread_iter (server) >= 25x aiofiles", "ksvc asyncio pread_iter (server)", "aiofiles", 25.0),
        t("ksvc batch API, pread_iter (server) >= 1.0x os.pread loop", "ksvc pread_iter (server)",
          "os.pread loop", 1.0),
        t("ksvc batch API, pread_iter (server) >= 1.3x liburing binding", "ksvc pread_iter (server)",
          "liburing binding", 1.3),
    ]  # fmt: skip


def run(report: Report, ops: int = 100_000, directory: str | None = None) -> None:
    """Measure W1 into *report*."""
    report.say(f"W1: random {BLOCK // 1024} KiB reads of a page-cached {FILE_SIZE >> 20} MiB file, {ops:,} reads")
    data = Data(ops, directory)
    try:
        for depth in DEPTHS:
            for c in contenders(data, depth):
                data.warm()
                report.measure("W1", f"qd{depth}", c, data.offsets, data.check, repeat=3, before=data.warm)
    finally:
        data.close()
    report.targets.extend(targets())
