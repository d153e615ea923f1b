"""Pin every size and offset of the channel ABI (docs/design.md §4)."""

from __future__ import annotations

import struct

from ksvc_host.abi import layout as L


def test_magics_and_version() -> None:
    assert L.INSTANCE_MAGIC.to_bytes(4, "big") == b"KSVC"
    assert L.RING_MAGIC.to_bytes(4, "big") == b"KRIN"
    assert L.SHARED_PAGE_MAGIC.to_bytes(4, "big") == b"KSHP"
    assert L.ABI_VERSION == 2
    assert L.CORR_ID_NONE == 2**64 - 1


def test_entry_sizes() -> None:
    assert L.SUBMIT_ENTRY.size == L.SUBMIT_ENTRY_SIZE == 64
    assert L.COMPLETION_ENTRY.size == 24  # packed fields; the ring slot is 32
    assert L.COMPLETION_ENTRY_SIZE == 32
    assert L.CREATE_PARAMS.size == L.CREATE_PARAMS_SIZE == 32
    assert L.RING_HEADER_SIZE == 64


def test_submit_entry_field_offsets() -> None:
    raw = L.SubmitEntry(0x0102030405060708, 0x11223344, 0x3, (1, 2, 3, 4, 5, 2**64 - 1)).pack()
    assert len(raw) == 64
    assert raw[0:8] == (0x0102030405060708).to_bytes(8, "little")
    assert raw[8:12] == (0x11223344).to_bytes(4, "little")
    assert raw[12:16] == (3).to_bytes(4, "little")
    for i in range(6):
        assert struct.unpack_from("<Q", raw, 16 + 8 * i)[0] == [1, 2, 3, 4, 5, 2**64 - 1][i]
    assert L.SubmitEntry.unpack(raw) == L.SubmitEntry(0x0102030405060708, 0x11223344, 3, (1, 2, 3, 4, 5, 2**64 - 1))


def test_completion_entry_field_offsets() -> None:
    raw = L.CompletionEntry(7, -9, L.COMPLETION_FLAG_MORE).pack()
    assert len(raw) == 32
    assert struct.unpack_from("<Q", raw, 0)[0] == 7
    assert struct.unpack_from("<q", raw, 8)[0] == -9
    assert struct.unpack_from("<I", raw, 16)[0] == 1
    assert raw[20:] == bytes(12)


def test_flags() -> None:
    assert L.SUBMIT_FLAG_LINKED == 1 and L.SUBMIT_FLAG_DRAIN == 2
    assert L.COMPLETION_FLAG_MORE == 1


def test_ring_header_offsets() -> None:
    assert L.RING_HEADER.size == 16
    assert L.RING_HEAD_OFFSET == 16 and L.RING_TAIL_OFFSET == 24 and L.RING_ENTRIES_OFFSET == 64


def test_create_params_and_ioctl() -> None:
    raw = L.CREATE_PARAMS.pack(256, 512, 0, -1, 0, 0, 0, 0)
    assert raw[0:4] == (256).to_bytes(4, "little")
    assert raw[4:8] == (512).to_bytes(4, "little")
    assert struct.unpack_from("<i", raw, 12)[0] == -1
    # _IOWR('K', 1, 32 bytes) = 0xC0204B01
    assert L.KSVC_IOC_CREATE == 0xC0204B01


def test_mmap_offsets_and_limits() -> None:
    assert (L.MMAP_SUBMIT_RING, L.MMAP_COMPLETION_RING, L.MMAP_SHARED_PAGE) == (0, 0x100000, 0x200000)
    assert (L.RING_MIN_ENTRIES, L.RING_MAX_ENTRIES, L.MAX_BATCH) == (16, 4096, 64)


def test_shared_page_offsets() -> None:
    expected = {
        "magic": 0x00, "version": 0x04, "pid": 0x08, "tgid": 0x0C, "ppid": 0x10, "pgid": 0x14,
        "sid": 0x18, "uid": 0x20, "gid": 0x24, "euid": 0x28, "egid": 0x2C, "suid": 0x30,
        "sgid": 0x34, "release": 0x40, "nodename": 0x81, "machine": 0xC2, "rlimit_nofile": 0x108,
        "rlimit_nproc": 0x110, "kthread_cpu": 0x200, "worker_state": 0x204,
        "entries_processed": 0x208, "batches_processed": 0x210, "io_uring_inflight": 0x218,
        "worker_pool_active": 0x220, "submit_head": 0x228, "submit_tail": 0x230,
        "completion_head": 0x238, "completion_tail": 0x240, "clock_monotonic_ns": 0x280,
        "clock_realtime_ns": 0x288, "boot_time_ns": 0x290, "uts_sysname": 0x2A0, "uts_version": 0x2E1,
    }  # fmt: skip
    assert {k: f.offset for k, f in L.SHARED_PAGE_FIELDS.items()} == expected
    for name, field in L.SHARED_PAGE_FIELDS.items():
        size = struct.calcsize(field.fmt)
        assert field.offset % min(size, 8) == 0 or field.fmt.endswith("s"), name
        assert field.offset + size <= L.PAGE_SIZE
    assert struct.calcsize(L.SHARED_PAGE_FIELDS["release"].fmt) == 65


def test_ring_entries_checked() -> None:
    import pytest

    for bad in (8, 15, 17, 8192, 0):
        with pytest.raises(ValueError, match="power of two"):
            L.check_ring_entries(bad, "submit_ring_entries")
    L.check_ring_entries(16, "x")
    L.check_ring_entries(4096, "x")


def test_cq_ring_flags() -> None:
    from ksvc_host.abi.io_uring import CqRingFlag

    assert int(CqRingFlag.EVENTFD_DISABLED) == 1  # IORING_CQ_EVENTFD_DISABLED (1U << 0), since 5.8
