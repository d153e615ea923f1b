"""Forged completion entries: the bulk reap checks every entry and never writes outside its own arrays.

The completion ring is shared memory, so the host cannot trust what it
reads there. A bulk entry names a group and an index; one that names no
live group, an index past the group's end, or an entry that already
completed is consumed with nothing written, and reported (``-EUCLEAN`` from
``ksvc_bulk_reap``, ``RingCorrupted`` from the front end). Every test runs on
the compiled loops and on the pure-Python reference (``impl`` fixture), and
the results arrays sit inside guard words that must stay untouched.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host import fastpath
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS
from ksvc_host.channel.ring import RingCorrupted
from ksvc_host.frontend.core import BULK_BIT, BULK_INDEX_BITS, BULK_MAX

GUARD = 0x5A5A_5A5A_5A5A_5A5A
"""What every word around a results array holds, before and after."""
_GUARD_WORD = GUARD.to_bytes(8, "little")
BEFORE = 64
"""Guard words in front of a results array."""
RING = 64
"""Completion ring entries of the test ring."""
MAX_OTHER = 16
MAX_DONE = 8


def corr(group: int, index: int) -> int:
    """A bulk entry's correlation id, laid out as ``ksvc_host.frontend.core`` does."""
    return BULK_BIT | (group << BULK_INDEX_BITS) | index


class Guarded:
    """A results array of *n* words with guard words on both sides, far enough for any 20-bit index."""

    def __init__(self, ffi: Any, n: int) -> None:
        self.ffi, self.n = ffi, n
        self.words = BEFORE + BULK_MAX + BEFORE  # covers index 2^20 - 1 past any n
        self.mem = ffi.new("int64_t[]", self.words)
        ffi.memmove(self.mem, _GUARD_WORD * self.words, 8 * self.words)
        self.results = self.mem + BEFORE

    def guards_intact(self) -> bool:
        raw = bytes(self.ffi.buffer(self.mem, 8 * self.words))
        after = raw[8 * (BEFORE + self.n) :]
        return raw[: 8 * BEFORE] == _GUARD_WORD * BEFORE and after == _GUARD_WORD * (len(after) // 8)

    def values(self) -> list[int]:
        return [int(self.results[i]) for i in range(self.n)]


class Reaper:
    """A bulk table and a completion ring of our own, drained the way the front end drains one."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi, self.lib = ffi, lib
        self.table = ffi.new("struct ksvc_bulk *")
        self.table.bit = BULK_BIT
        self.table.index_bits = BULK_INDEX_BITS
        self.ring = ffi.new("uint8_t[]", L.RING_ENTRIES_OFFSET + RING * L.COMPLETION_ENTRY_SIZE)
        self.keep: list[Any] = []
        self.head = self.tail = 0
        self.other = ffi.new("uint64_t[]", 3 * MAX_OTHER)
        self.done = ffi.new("uint32_t[]", MAX_DONE)
        self.counts = ffi.new("uint32_t[3]")

    def arm(self, group: int, n: int) -> Guarded:
        g = Guarded(self.ffi, n)
        self.keep.append(fastpath.arm_group(self.table, group, g.results, n))
        self.keep.append(g)
        return g

    def put(self, corr_id: int, result: int, flags: int = 0) -> None:
        slot = L.RING_ENTRIES_OFFSET + (self.tail % RING) * L.COMPLETION_ENTRY_SIZE
        L.COMPLETION_ENTRY.pack_into(self.ffi.buffer(self.ring), slot, corr_id, result, flags, 0)
        self.tail += 1

    def reap(self) -> tuple[list[tuple[int, int, int]], list[int], int]:
        """Drain everything: (other entries, finished groups, invalid entries reported)."""
        others: list[tuple[int, int, int]] = []
        finished: list[int] = []
        bad = 0
        while self.head != self.tail:
            r = self.lib.ksvc_bulk_reap(
                self.ring, self.head, self.tail, RING - 1, self.table,
                self.other, MAX_OTHER, self.done, MAX_DONE, self.counts,
            )  # fmt: skip
            consumed, n_other, n_done = self.counts[0], self.counts[1], self.counts[2]
            if r < 0:
                assert r == -errno.EUCLEAN
                assert consumed >= 1  # the invalid entry is consumed: no caller can loop on it
                bad += 1
            else:
                assert r == consumed
            others += [(int(self.other[3 * i]), int(self.other[3 * i + 1]), int(self.other[3 * i + 2]))
                       for i in range(n_other)]  # fmt: skip
            finished += [int(self.done[i]) for i in range(n_done)]
            self.head += consumed
        return others, finished, bad


@pytest.fixture
def reaper(impl: str) -> Reaper:
    """Our own table and ring, on the implementation under test."""
    return Reaper(fastpath.ffi, fastpath.lib)


@pytest.mark.parametrize("index", [1, 1000, BULK_MAX - 1])
def test_an_index_past_the_group_is_rejected_and_the_real_result_kept(reaper: Reaper, index: int) -> None:
    g = reaper.arm(7, 1)
    reaper.put(corr(7, index), -666)  # forged: the group has one entry
    reaper.put(12345, 99, 1)  # an ordinary completion behind it must still arrive
    reaper.put(corr(7, 0), 4096)  # the real one
    others, finished, bad = reaper.reap()
    assert bad == 1
    assert g.guards_intact(), "a forged index wrote outside the results array"
    assert g.values() == [4096]
    assert finished == [7] and others == [(12345, 99, 1)]
    assert reaper.table.left[7] == 0


@pytest.mark.parametrize("group", [8, 3, fastpath.BULK_GROUPS + 5, (1 << (61 - BULK_INDEX_BITS)) - 1])
def test_an_unknown_group_is_rejected(reaper: Reaper, group: int) -> None:
    # 8 and 3: never armed; BULK_GROUPS + 5 would alias live group 5 if the group number were
    # masked; the last is the largest group number a correlation id below the bulk bit can carry.
    g5 = reaper.arm(5, 2)
    reaper.put(corr(group, 0), -1)
    reaper.put(corr(5, 1), 11)
    reaper.put(corr(5, 0), 10)
    others, finished, bad = reaper.reap()
    assert bad == 1
    assert g5.values() == [10, 11] and g5.guards_intact()
    assert finished == [5] and others == []


def test_a_duplicate_completion_is_rejected_and_left_never_underflows(reaper: Reaper) -> None:
    g = reaper.arm(9, 3)
    reaper.put(corr(9, 0), 100)
    reaper.put(corr(9, 0), -5)  # forged second completion of entry 0
    reaper.put(corr(9, 0), -6)  # and a third
    assert reaper.reap() == ([], [], 2)
    assert reaper.table.left[9] == 2  # only the real completion counted
    reaper.put(corr(9, 2), 300)
    reaper.put(corr(9, 1), 200)
    reaper.put(corr(9, 1), 201)  # after the group finished: it is no longer live
    others, finished, bad = reaper.reap()
    assert (others, finished, bad) == ([], [9], 1)
    assert g.values() == [100, 200, 300] and g.guards_intact()
    assert reaper.table.left[9] == 0


def test_a_group_without_its_length_or_bitmap_is_not_live(reaper: Reaper) -> None:
    # A table filled the old way (results and left only) must not let an entry through unchecked.
    g = Guarded(reaper.ffi, 4)
    reaper.table.results[2] = g.results
    reaper.table.left[2] = 4
    reaper.put(corr(2, 1000), 1)
    reaper.put(corr(2, 0), 1)
    assert reaper.reap() == ([], [], 2)
    assert g.guards_intact() and g.values() == [GUARD] * 4


def test_a_disarmed_group_takes_no_more_completions(reaper: Reaper) -> None:
    g = reaper.arm(4, 2)
    fastpath.disarm_group(reaper.table, 4)
    reaper.put(corr(4, 0), 1)
    assert reaper.reap() == ([], [], 1)
    assert g.values() == [GUARD, GUARD]


def test_the_done_list_still_limits_a_call(reaper: Reaper) -> None:
    # More groups finish than the done list holds: the rest wait for the next call, nothing is dropped.
    groups = [reaper.arm(100 + i, 1) for i in range(MAX_DONE + 3)]
    for i in range(len(groups)):
        reaper.put(corr(100 + i, 0), i)
    others, finished, bad = reaper.reap()
    assert bad == 0 and sorted(finished) == [100 + i for i in range(len(groups))]
    assert [g.values() for g in groups] == [[i] for i in range(len(groups))]


def test_complete_entry_checks_like_the_reap(impl: str) -> None:
    r = Reaper(fastpath.ffi, fastpath.lib)
    g = r.arm(1, 2)
    assert fastpath.complete_entry(r.table, corr(1, 1), 7) == -1
    for bad in (corr(1, 1), corr(1, 2), corr(1, 1000), corr(2, 0), corr(fastpath.BULK_GROUPS + 1, 0)):
        with pytest.raises(RingCorrupted):
            fastpath.complete_entry(r.table, bad, 9)
    assert fastpath.complete_entry(r.table, corr(1, 0), 6) == 1
    assert g.values() == [6, 7] and g.guards_intact()


def test_arm_group_refuses_an_impossible_length(impl: str) -> None:
    r = Reaper(fastpath.ffi, fastpath.lib)
    for n in (0, BULK_MAX + 1):
        with pytest.raises(ValueError):
            fastpath.arm_group(r.table, 0, r.ffi.new("int64_t[]", 1), n)


def test_native_and_reference_agree_on_random_forgeries() -> None:
    rng = random.Random(8)
    try:
        for _ in range(25):
            groups = {rng.randrange(16): rng.randrange(1, 70) for _ in range(4)}
            entries = []
            for g, n in groups.items():
                entries += [(corr(g, i), rng.randrange(-4095, 1 << 40)) for i in range(n)]
            for _ in range(rng.randrange(12)):  # forgeries: past the end, unknown groups, duplicates; and others
                g = rng.randrange(20)
                entries.append((corr(g, rng.choice([0, 1, 69, 70, 1000, BULK_MAX - 1])), -1))
                entries.append((rng.randrange(1, 1 << 40), 5))
            rng.shuffle(entries)
            outcomes = []
            for pure in (False, True):
                if fastpath.select(pure=pure) != ("python" if pure else "native"):
                    pytest.skip(f"compiled fast path unavailable: {fastpath.REASON}")
                r = Reaper(fastpath.ffi, fastpath.lib)
                arrays = {g: r.arm(g, n) for g, n in groups.items()}
                got = []
                for start in range(0, len(entries), RING // 2):  # more entries than the ring holds
                    for c, res in entries[start : start + RING // 2]:
                        r.put(c, res)
                    got.append(r.reap())
                assert all(a.guards_intact() for a in arrays.values())
                left = [int(r.table.left[g]) for g in groups]
                outcomes.append((got, {g: a.values() for g, a in arrays.items()}, left))
            assert outcomes[0] == outcomes[1]
    finally:
        fastpath.select()


# End to end: forged entries in a live instance's completion ring -------------------------------

SIZE = 4096


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = os.urandom(4 * SIZE)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def _forge(k: ksvc.Ksvc, entries: list[tuple[int, int]]) -> None:
    """Write completion entries as a peer would: at the ring's tail, then publish it."""
    ring = k.instance.channel.completion_ring
    sink: Any = k.instance.completion_sink
    tail = sink.pending_tail
    assert tail == ring.tail  # nothing of the dispatcher's is unpublished (inline dispatcher, idle)
    for c, res in entries:
        L.COMPLETION_ENTRY.pack_into(ring.buf, ring.slot_offset(tail), c, res, 0, 0)
        tail += 1
    ring.publish_tail(tail)
    sink.pending_tail = tail  # the sink writes after our entries, as after the express lane's


@pytest.mark.parametrize("forged", ["index 1", "index 1000", "index 2^20-1", "unknown group", "duplicate"])
def test_forged_completions_in_a_live_instance(impl: str, data_file: tuple[int, bytes], forged: str) -> None:
    """Needs ``Completer`` (frontend/core.py) to arm groups with ``fastpath.arm_group`` and report ``-EUCLEAN``."""
    fd, data = data_file
    n = 1 if forged.startswith("index") else 2
    with ksvc.open(dispatcher="inline") as k:
        c = k._completer
        ffi = fastpath.ffi
        guarded = Guarded(ffi, n)
        offsets = ffi.new("uint64_t[]", [i * SIZE for i in range(n)])
        buf = ffi.new("char[]", n * SIZE)
        b = c.new_bulk(SYSCALLS["pread64"], fd, int(ffi.cast("uintptr_t", buf)), SIZE, SIZE, None, n,
                       keep=buf, tables=(offsets, guarded.results))  # fmt: skip
        c.submit_bulk(b)  # the inline dispatcher has not run: no completion yet
        g = b.group
        assert g >= 0
        bad = {
            "index 1": [(corr(g, 1), -1)],
            "index 1000": [(corr(g, 1000), -1)],
            "index 2^20-1": [(corr(g, BULK_MAX - 1), -1)],
            "unknown group": [(corr((g + 1) % fastpath.BULK_GROUPS, 0), -1),
                              (corr(g + fastpath.BULK_GROUPS, 0), -1)],  # the second would alias g if masked
            "duplicate": [(corr(g, 0), -1), (corr(g, 0), -1)],
        }[forged]  # fmt: skip
        _forge(k, bad)
        # A forged entry 0 that arrives first is taken for the real one (nothing tells them apart); the
        # second forgery and the real completion behind them are then duplicates: both reported.
        expect_reports = 2 if forged == "duplicate" else len(bad)
        reports = 0
        deadline = time.monotonic() + 5
        while not b.done and time.monotonic() < deadline:
            try:
                c.wait_until(lambda: b.done or time.monotonic() > deadline)
            except RingCorrupted:
                reports += 1
        assert guarded.guards_intact(), "a forged completion wrote outside the results array"
        assert b.done, "the real completions were lost"
        assert 1 <= reports <= expect_reports  # one report per reap that met any (a reap may meet several)
        results = b.values()
        if forged == "duplicate":
            assert results[0] == -1 and results[1] == SIZE  # the first entry-0 completion was taken as real
        else:
            assert results == [SIZE] * n
            assert bytes(ffi.buffer(buf, n * SIZE)) == data[: n * SIZE]
        assert k.pread(fd, 10, 5) == data[5:15]  # the instance goes on working
        assert k.pread_many(fd, 100, [0, SIZE]) == [data[:100], data[SIZE : SIZE + 100]]
