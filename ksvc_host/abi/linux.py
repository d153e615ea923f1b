"""Linux user ABI facts the translation layer needs: flags and struct layouts (x86-64)."""

from __future__ import annotations

import struct
from typing import Final

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_REMOVEDIR: Final = 0x200
AT_EMPTY_PATH: Final = 0x1000

STATX_BASIC_STATS: Final = 0x7FF

O_WRONLY: Final = 0o1
O_CREAT: Final = 0o100
O_TRUNC: Final = 0o1000

U32_MAX: Final = 0xFFFF_FFFF
U64_MASK: Final = 0xFFFF_FFFF_FFFF_FFFF
U32_MASK: Final = 0xFFFF_FFFF

STATX_SIZE: Final = 256
"""``struct statx`` is 256 bytes."""

STATX_FIELDS = struct.Struct("<IIQIIIH2xQQQQ")
"""stx_mask, stx_blksize, stx_attributes, stx_nlink, stx_uid, stx_gid, stx_mode, stx_ino, stx_size,
stx_blocks, stx_attributes_mask: bytes 0..63."""
STATX_TIMESTAMP = struct.Struct("<qI4x")
"""``struct statx_timestamp``: tv_sec i64, tv_nsec u32, pad: 16 bytes."""
STATX_ATIME: Final = 64
STATX_BTIME: Final = 80
STATX_CTIME: Final = 96
STATX_MTIME: Final = 112
STATX_DEVS = struct.Struct("<IIII")
"""stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor at byte 128."""
STATX_DEVS_OFFSET: Final = 128

STAT = struct.Struct("<QQQIII4xQqqqqQqQqQ24x")
"""x86-64 ``struct stat`` (144 bytes): st_dev, st_ino, st_nlink, st_mode, st_uid, st_gid, pad, st_rdev,
st_size, st_blksize, st_blocks, st_atime, st_atime_nsec, st_mtime, st_mtime_nsec, st_ctime,
st_ctime_nsec, reserved[3]."""
STAT_SIZE: Final = 144


def encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev``: how ``struct stat`` carries a device number."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def statx_to_stat(statx: bytes) -> bytes:
    """Convert a filled ``struct statx`` into the ``struct stat`` the old calls return."""
    mask, blksize, _attrs, nlink, uid, gid, mode, ino, size, blocks, _amask = STATX_FIELDS.unpack_from(statx, 0)
    del mask
    a_sec, a_nsec = STATX_TIMESTAMP.unpack_from(statx, STATX_ATIME)
    c_sec, c_nsec = STATX_TIMESTAMP.unpack_from(statx, STATX_CTIME)
    m_sec, m_nsec = STATX_TIMESTAMP.unpack_from(statx, STATX_MTIME)
    r_major, r_minor, d_major, d_minor = STATX_DEVS.unpack_from(statx, STATX_DEVS_OFFSET)
    return STAT.pack(
        encode_dev(d_major, d_minor), ino, nlink, mode, uid, gid, encode_dev(r_major, r_minor),
        size, blksize, blocks, a_sec, a_nsec, m_sec, m_nsec, c_sec, c_nsec,
    )  # fmt: skip
