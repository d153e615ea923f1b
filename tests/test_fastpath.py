"""The fast path: bulk operations and the dispatcher's express lane, compiled and pure-Python.

Every test here runs twice, once per implementation of the loops
(``ksvc_host.fastpath``), and compares results with the direct ``os.*``
calls. Under tox (``KSVC_REQUIRE_NATIVE=1``) a missing compiled module
fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import ksvc_host as ksvc
from ksvc_host import fastpath
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.dispatch.turn import ENV_NO_EXPRESS as ENV_DISABLE

SIZE = 1 << 20


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A 1 MiB file of random bytes, open read-write."""
    data = os.urandom(SIZE)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    yield fd, data
    os.close(fd)


@pytest.fixture(params=["thread", "inline"])
def kx(request: pytest.FixtureRequest, impl: str) -> Iterator[ksvc.Ksvc]:
    """A default-stack instance built after the implementation was selected; no thread lanes: these
    are the shared channel's loops."""
    with ksvc.open(dispatcher=request.param, lanes=False) as k:
        yield k


def _offsets(seed: int, n: int, size: int) -> list[int]:
    rng = random.Random(seed)
    # Aligned and unaligned, inside the file, straddling its end and past it.
    return [rng.choice([rng.randrange(0, SIZE // size) * size, rng.randrange(0, SIZE + 2 * size)]) for _ in range(n)]


@pytest.mark.parametrize("n,size", [(1, 4096), (64, 4096), (700, 512), (3000, 100)])
def test_pread_many_equals_os_pread(kx: ksvc.Ksvc, data_file: tuple[int, bytes], n: int, size: int) -> None:
    fd, _ = data_file
    offs = _offsets(n * size, n, size)
    assert kx.pread_many(fd, size, offs) == [os.pread(fd, size, o) for o in offs]


def test_bulk_entries_take_the_express_lane(kx: ksvc.Ksvc, data_file: tuple[int, bytes]) -> None:
    fd, data = data_file
    disp = kx.instance.dispatcher
    before = disp.express_entries
    assert kx.pread_many(fd, 4096, [0, 8192]) == [data[:4096], data[8192:12288]]
    if disp.mode != "thread":  # a threaded dispatcher may meet entries mid-turn, after its lane ran: generic path
        assert disp.express_entries - before == 2


def test_the_express_lane_runs_the_selected_loops(kx: ksvc.Ksvc, impl: str) -> None:
    # The express lane is the io backend's (ksvc-basic); it follows the host's choice of loops, so the
    # tests here run express.c and its reference alike.
    from ksvc_basic import express_reference

    lane = kx.instance.dispatcher.turn.express
    assert lane is not None
    uses_reference = lane._lib.ksvc_express_submit is express_reference.express_submit  # type: ignore[attr-defined]
    assert uses_reference is (impl == "python")


def test_no_express_gives_the_same_results(
    monkeypatch: pytest.MonkeyPatch, impl: str, data_file: tuple[int, bytes]
) -> None:
    fd, _ = data_file
    offs = _offsets(7, 300, 4096)
    monkeypatch.setenv(ENV_DISABLE, "1")
    with ksvc.open() as k:
        assert k.instance.dispatcher.express_entries == 0
        assert k.pread_many(fd, 4096, offs) == [os.pread(fd, 4096, o) for o in offs]
        assert k.instance.dispatcher.express_entries == 0


def test_pwrite_many_then_read_back(kx: ksvc.Ksvc, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    blocks = os.urandom(50 * 1000)
    offs = [i * 3000 + 7 for i in range(50)]
    assert kx.pwrite_many(fd, blocks, 1000, offs) == [1000] * 50
    for i, o in enumerate(offs):
        assert os.pread(fd, 1000, o) == blocks[i * 1000 : (i + 1) * 1000]


def test_preadinto_many_fills_the_slices(kx: ksvc.Ksvc, data_file: tuple[int, bytes]) -> None:
    fd, data = data_file
    buf = bytearray(4 * 4096)
    offs = [SIZE - 100, 0, 4096 * 10, SIZE + 5]
    assert kx.preadinto_many(fd, buf, 4096, offs) == [100, 4096, 4096, 0]
    assert buf[:100] == data[-100:]
    assert buf[4096:8192] == data[:4096]
    assert buf[8192:12288] == data[40960:45056]
    with pytest.raises(ValueError, match="cannot hold"):
        kx.preadinto_many(fd, bytearray(10), 4096, [0])


def test_errors_match_the_direct_calls(kx: ksvc.Ksvc, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    with pytest.raises(OSError) as direct:
        os.pread(fd, 10, -1)
    with pytest.raises(OSError) as ours:
        kx.pread_many(fd, 10, [0, -1])
    assert ours.value.errno == direct.value.errno == errno.EINVAL
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as ours:
            kx.pread_many(r, 10, [0])
        assert ours.value.errno == errno.ESPIPE  # a pipe is not seekable: the kernel's answer, not a wait
        with pytest.raises(OSError) as ours:
            kx.pread_many(12345, 10, [0])
        assert ours.value.errno == errno.EBADF
    finally:
        os.close(r)
        os.close(w)
    assert kx.pread_many(fd, 10, []) == []


def test_nonblocking_read_is_not_taken_by_the_lane(kx: ksvc.Ksvc) -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        before = kx.instance.dispatcher.express_entries
        with pytest.raises(BlockingIOError):
            kx.read(r, 10)  # the plain syscall's EAGAIN, not an io_uring wait
        assert kx.instance.dispatcher.express_entries == before
        os.write(w, b"abc")
        assert kx.read(r, 10) == b"abc"
    finally:
        os.close(r)
        os.close(w)


def test_drain_after_express_writes_sees_them(kx: ksvc.Ksvc, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    payload = os.urandom(4096)
    buf = bytearray(4096)
    view = fastpath.ffi.from_buffer(buf)
    src = fastpath.ffi.from_buffer(payload)
    addr = int(fastpath.ffi.cast("uintptr_t", view))
    saddr = int(fastpath.ffi.cast("uintptr_t", src))
    ids = kx.raw.submit([
        (SYSCALLS["pwrite64"], (fd, saddr, 4096, 8192), 0),          # express
        (SYSCALLS["pread64"], (fd, addr, 4096, 8192), L.SUBMIT_FLAG_DRAIN),  # waits for it
    ])  # fmt: skip
    got = {c.corr_id: c.result for c in kx.raw.completions(wait_for=2)}
    assert got == {ids[0]: 4096, ids[1]: 4096}
    assert bytes(buf) == payload


def test_more_than_the_rings_hold(impl: str, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    offs = _offsets(3, 5000, 64)
    for disp in ("thread", "inline"):
        with ksvc.open(dispatcher=disp, submit_entries=16, complete_entries=16) as k:
            assert k.pread_many(fd, 64, offs) == [os.pread(fd, 64, o) for o in offs]


def test_async_pread_many(impl: str, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    offs = _offsets(11, 500, 4096)

    async def main() -> list[list[bytes]]:
        async with ksvc.open_async() as k:
            return list(await asyncio.gather(*(k.pread_many(fd, 4096, offs[i : i + 50]) for i in range(0, 500, 50))))

    got = [b for part in asyncio.run(main()) for b in part]
    assert got == [os.pread(fd, 4096, o) for o in offs]


# -- the loops themselves, both implementations on the same memory ------------------------------


def test_submit_strided_writes_abi_entries(impl: str) -> None:
    ffi = fastpath.ffi
    ring = ffi.new("uint8_t[]", L.ring_bytes(16, L.SUBMIT_ENTRY_SIZE))
    offs = ffi.new("uint64_t[]", [10, 20, 30])
    fastpath.lib.ksvc_submit_strided(ring, 14, 15, 100, 17, 5, 0x1000, 0x200, 64, offs, ffi.NULL, 3)
    raw = bytes(ffi.buffer(ring))
    assert struct.unpack_from("<Q", raw, L.RING_TAIL_OFFSET)[0] == 17
    for i, slot in enumerate((14, 15, 0)):
        e = L.SubmitEntry.unpack(raw, L.RING_ENTRIES_OFFSET + slot * L.SUBMIT_ENTRY_SIZE)
        assert e == L.SubmitEntry(100 + i, 17, 0, (5, 0x1000 + i * 0x200, 64, 10 * (i + 1), 0, 0))
    # With a table of addresses, buffer i is wherever addrs[i] says (bytes objects of a stream).
    addrs = ffi.new("uint64_t[]", [0x9000, 0x4000, 0x7777])
    fastpath.lib.ksvc_submit_strided(ring, 17, 15, 200, 17, 5, 0x1000, 0x200, 64, offs, addrs, 3)
    raw = bytes(ffi.buffer(ring))
    assert struct.unpack_from("<Q", raw, L.RING_TAIL_OFFSET)[0] == 20
    for i, slot in enumerate((1, 2, 3)):
        e = L.SubmitEntry.unpack(raw, L.RING_ENTRIES_OFFSET + slot * L.SUBMIT_ENTRY_SIZE)
        assert e == L.SubmitEntry(200 + i, 17, 0, (5, (0x9000, 0x4000, 0x7777)[i], 64, 10 * (i + 1), 0, 0))


def test_bulk_reap_routes_entries(impl: str) -> None:
    ffi = fastpath.ffi
    ring = ffi.new("uint8_t[]", L.ring_bytes(16, L.COMPLETION_ENTRY_SIZE))
    buf = ffi.buffer(ring)
    bit, bits = 1 << 61, 20
    entries = [(bit | (3 << bits) | 1, -5, 0), (42, -2, 1), (bit | (3 << bits) | 0, 7, 0), (43, 9, 0)]
    for i, (corr, res, flags) in enumerate(entries):
        L.COMPLETION_ENTRY.pack_into(buf, L.RING_ENTRIES_OFFSET + i * L.COMPLETION_ENTRY_SIZE, corr, res, flags, 0)
    table = ffi.new("struct ksvc_bulk *")
    table.bit, table.index_bits = bit, bits
    results = ffi.new("int64_t[2]")
    keep = [fastpath.arm_group(table, 3, results, 2)]
    other = ffi.new("uint64_t[]", 6)
    done = ffi.new("uint32_t[]", 4)
    counts = ffi.new("uint32_t[3]")
    assert fastpath.lib.ksvc_bulk_reap(ring, 0, 4, 15, table, other, 2, done, 4, counts) == 4
    assert list(counts) == [4, 2, 1]
    assert list(results) == [7, -5] and done[0] == 3 and table.left[3] == 0
    assert [other[i] for i in range(6)] == [42, (-2) & (2**64 - 1), 1, 43, 9, 0]
    # room for one other entry only: it stops before the second
    keep.append(fastpath.arm_group(table, 3, results, 2))  # a fresh group: the same entries again
    assert fastpath.lib.ksvc_bulk_reap(ring, 0, 4, 15, table, other, 1, done, 4, counts) == 3
    assert list(counts) == [3, 1, 1]


def test_socket_send_and_recv_take_the_lane(kx: ksvc.Ksvc) -> None:
    import socket

    a, b = socket.socketpair()
    try:
        disp = kx.instance.dispatcher

        def in_c() -> int:  # entries a lane took: the dispatcher's express lane or this thread's own
            return disp.express_entries + kx._lanes.entries()

        before = in_c()
        assert kx.send(a.fileno(), b"hello") == 5
        assert kx.recv(b.fileno(), 100) == b"hello"
        assert kx.send(a.fileno(), b"x" * 10, socket.MSG_NOSIGNAL) == 10
        assert kx.recv(b.fileno(), 4, socket.MSG_PEEK) == b"xxxx"  # message flags reach the kernel
        assert kx.recv(b.fileno(), 100) == b"x" * 10
        taken = in_c() - before
        # A threaded dispatcher may meet entries mid-turn, after its express lane ran; a thread's own lane has no turns.
        if disp.mode != "thread" or kx._lanes.entries():
            assert taken == 5
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            kx.recv(b.fileno(), 10)  # O_NONBLOCK: the plain syscall's EAGAIN, not a wait
        assert in_c() - before == taken  # never taken by a lane
    finally:
        a.close()
        b.close()


def test_a_failed_build_is_reported_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # As after an install where the C compiler was missing: the reference loops, and one line saying why.
    monkeypatch.setattr(fastpath, "IMPLEMENTATION", "python")
    monkeypatch.setattr(fastpath, "REASON", "the compiled fast path is not available (No module named x)")
    monkeypatch.setattr(fastpath, "_warned", False)
    for _ in range(2):
        with ksvc.open():
            pass
    assert capsys.readouterr().err.count("ksvc: the compiled fast path is not available") == 1
    monkeypatch.setattr(fastpath, "_warned", False)
    monkeypatch.setattr(fastpath, "REASON", f"{fastpath.ENV_PURE} is set; using the pure-Python loops")
    with ksvc.open():
        pass
    assert capsys.readouterr().err == ""  # chosen on purpose: nothing to report


def test_new_bytes_gives_objects_and_their_addresses() -> None:
    lib = fastpath.lib
    if fastpath.IMPLEMENTATION != "native" or lib.new_bytes is None:
        pytest.skip(f"compiled fast path unavailable: {fastpath.REASON}")
    ffi = fastpath.ffi
    table = ffi.new("uint64_t[]", 3)
    objs = lib.new_bytes(3, 4096, int(ffi.cast("uintptr_t", table)))
    assert [type(b) for b in objs] == [bytes] * 3 and [len(b) for b in objs] == [4096] * 3
    assert len({table[i] for i in range(3)}) == 3  # three separate buffers, one per object
    assert lib.new_bytes(0, 4096, 0) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        lib.new_bytes(-1, 10, int(ffi.cast("uintptr_t", table)))
    with pytest.raises(ValueError, match="table is NULL"):
        lib.new_bytes(2, 10, 0)


def test_generic_completions_beside_express_ones_are_never_stranded(
    kx: ksvc.Ksvc, data_file: tuple[int, bytes]
) -> None:
    # The lane's reap leaves the CQ to the backend's own reap only when something else is there
    # (cq_clear); io_uring calls of the generic loop (fsync) and worker calls (getcwd) in between
    # express reads must all complete.
    fd, data = data_file
    buf = bytearray(4096)
    addr = int(fastpath.ffi.cast("uintptr_t", fastpath.ffi.from_buffer(buf)))
    disp = kx.instance.dispatcher
    for round_ in range(50):
        off = (round_ * 4096) % SIZE
        ids = kx.raw.submit([
            (SYSCALLS["pread64"], (fd, addr, 4096, off), 0),
            (SYSCALLS["fsync"], (fd,), 0),
            (SYSCALLS["pread64"], (fd, addr, 4096, off), 0),
        ])  # fmt: skip
        got = {c.corr_id: c.result for c in kx.raw.completions(wait_for=3)}
        assert got == {ids[0]: 4096, ids[1]: 0, ids[2]: 4096}
        assert bytes(buf) == data[off : off + 4096]
    assert kx.getcwd() == os.getcwd()
    assert disp.io_backend.inflight() == 0


def test_express_reap_says_whether_it_left_the_cq_empty(impl: str, data_file: tuple[int, bytes]) -> None:
    fd, _ = data_file
    with ksvc.open(dispatcher="inline", lanes=False) as k:
        lane = k.instance.dispatcher.turn.express
        assert lane is not None
        assert k.pread_many(fd, 4096, [0, 4096]) == [os.pread(fd, 4096, 0), os.pread(fd, 4096, 4096)]
        assert lane.cq_clear  # the last reap took every CQE
        assert lane.reap() == 0 and not lane.cq_clear  # nothing in flight: the CQ was not looked at
