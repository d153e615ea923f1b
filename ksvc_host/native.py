"""Raw system calls and buffer addresses through cffi (ABI mode).

This is the one place where the host touches C: ``syscall(2)`` from libc,
``mmap``/``madvise``/``munmap`` for the memory it shares with the kernel, and
the address of a Python buffer. Everything that needs to make a raw system
call (worker threads, io_uring set-up, the shared page) goes through here, so
there is a single definition of how an argument becomes a register.
"""

from __future__ import annotations

import os
from typing import Any, Final

import cffi

ffi = cffi.FFI()
# syscall() is variadic in libc. Declaring it with a fixed arity of seven
# longs is safe on x86-64 (arguments travel in registers either way) and
# saves a cast per argument on every call.
ffi.cdef(
    """
    long syscall(long number, long a0, long a1, long a2, long a3, long a4, long a5);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int munmap(void *addr, size_t length);
    int madvise(void *addr, size_t length, int advice);
    """
)
_libc = ffi.dlopen(None)
_raw_syscall = _libc.syscall

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
MAP_SHARED: Final = 0x01
MAP_ANONYMOUS: Final = 0x20
MAP_POPULATE: Final = 0x8000
MADV_DONTFORK: Final = 10
"""madvise(2): the range is not inherited by a child of ``fork()`` (it is absent there, not shared)."""
_MAP_FAILED = ffi.cast("void *", -1)


def to_signed(value: int) -> int:
    """Interpret a raw u64 argument as the signed long the kernel receives."""
    value &= _U64 - 1
    return value - _U64 if value > _I64_MAX else value


def syscall(nr: int, a0: int = 0, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    """Make system call *nr* and return its result, or ``-errno`` on failure.

    Arguments are raw machine words (pointers as integers). The GIL is
    released for the duration of the call, so a blocking call on one thread
    does not stop the others.
    """
    ret: int = _raw_syscall(nr, a0, a1, a2, a3, a4, a5)
    if ret == -1:
        err = ffi.errno
        if err:
            return -err
    return ret


def syscall_u64(nr: int, args: tuple[int, ...]) -> int:
    """Like :func:`syscall`, for six raw u64 words as they sit in a submit entry."""
    a = [to_signed(x) for x in args]
    return syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5])


def address_of(buf: Any) -> int:
    """Address of a writable or read-only buffer (bytes, bytearray, memoryview, cdata).

    The caller must keep *buf* alive for as long as the address is in use.
    """
    if isinstance(buf, ffi.CData):
        return int(ffi.cast("uintptr_t", buf))
    return int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))


def alloc(size: int) -> Any:
    """Zeroed, C-owned memory of *size* bytes (freed when the cdata is collected)."""
    return ffi.new("char[]", max(size, 1))


_NR_PROCESS_VM_READV = 310
_NR_PROCESS_VM_WRITEV = 311
_NR_GETPID = 39


def _copy_user(nr: int, local: int, remote: int, length: int) -> int:
    # process_vm_readv/writev on our own pid validate the remote address and
    # return EFAULT instead of faulting: the only safe way for Python code to
    # touch a pointer that came from a caller.
    iov = ffi.new("unsigned long[4]", [local, length, remote, length])
    base = int(ffi.cast("uintptr_t", iov))
    ret = syscall(nr, syscall(_NR_GETPID), base, 1, base + 16, 1, 0)
    if ret < 0:
        return ret
    return 0 if ret == length else -14  # a partial copy means the tail was unmapped: EFAULT


def write_user(address: int, data: bytes) -> int:
    """Copy *data* to a caller-supplied *address*; 0, or ``-EFAULT`` if it is not writable."""
    if not data:
        return 0
    src = ffi.from_buffer(data)
    return _copy_user(_NR_PROCESS_VM_WRITEV, int(ffi.cast("uintptr_t", src)), address, len(data))


def read_user(address: int, length: int) -> bytes | int:
    """Copy *length* bytes from a caller-supplied *address*; ``-EFAULT`` if unreadable."""
    dst = ffi.new("char[]", max(length, 1))
    ret = _copy_user(_NR_PROCESS_VM_READV, int(ffi.cast("uintptr_t", dst)), address, length)
    return ret if ret < 0 else bytes(ffi.buffer(dst, length))


def map_shared(length: int, fd: int = -1, offset: int = 0, *, populate: bool = False) -> int:
    """``mmap`` *length* bytes read-write and ``MAP_SHARED`` that a forked child does not inherit.

    *fd* ``-1`` maps anonymous memory. The range gets ``MADV_DONTFORK`` before
    this returns: shared memory the host hands to a peer (rings, pinned
    buffers) must never reach a child, which may have dropped privileges
    and would otherwise write into the parent's rings. Returns the address;
    raises ``OSError`` (nothing stays mapped) when either step fails.
    """
    flags = MAP_SHARED | (MAP_ANONYMOUS if fd < 0 else 0) | (MAP_POPULATE if populate else 0)
    ptr = _libc.mmap(ffi.NULL, length, PROT_READ | PROT_WRITE, flags, fd, offset)
    if ptr == _MAP_FAILED:
        err = ffi.errno
        raise OSError(err, f"mmap of {length} bytes (fd {fd}, offset {offset:#x}): {os.strerror(err)}")
    if _libc.madvise(ptr, length, MADV_DONTFORK) != 0:
        err = ffi.errno
        _libc.munmap(ptr, length)
        raise OSError(err, f"madvise(MADV_DONTFORK) refused for a shared mapping: {os.strerror(err)}")
    return int(ffi.cast("uintptr_t", ptr))


def unmap(address: int, length: int) -> None:
    """``munmap``; only for ranges this process mapped with :func:`map_shared` and still owns."""
    _libc.munmap(ffi.cast("void *", address), length)
