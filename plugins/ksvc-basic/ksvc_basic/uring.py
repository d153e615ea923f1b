"""A raw io_uring: io_uring_setup, the three mmaps, SQE fill, io_uring_enter, CQE reap.

No liburing: system calls go through :mod:`ksvc_host.native` and the
kernel structures are declared here for cffi (ABI mode). The SQ ring, CQ
ring and SQE array are mapped with libc ``mmap`` so cffi pointers can
address them directly.

Across ``fork()`` a ring stays with its parent (:mod:`ksvc_host.forksafety`):
the three mappings are ``MADV_DONTFORK``, the ring's descriptor (and the
eventfd registered with it) are closed in the child, and the child's copy
of this object raises ``ClosedError`` on use. Otherwise a child, even one
that dropped its privileges, could write SQEs the parent's ring (or its
SQ thread, with SQPOLL) executes with the parent's credentials.

Memory ordering: x86-64 does not reorder stores with other stores nor
loads with other loads, and cffi field accesses are plain loads and
stores, so "fill the SQE, then write the array slot, then the tail" and
"read the tail, then the CQEs, then write the head" are ordered as the
kernel expects.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import cffi

from ksvc_host import forksafety, native
from ksvc_host.abi import io_uring as U
from ksvc_host.traits.io_backend import IoCompletion, SqeSpec

ffi = cffi.FFI()
ffi.cdef(
    """
    struct io_sqring_offsets { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
                               uint64_t user_addr; };
    struct io_cqring_offsets { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
                               uint64_t user_addr; };
    struct io_uring_params { uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features,
                             wq_fd; uint32_t resv[3]; struct io_sqring_offsets sq_off;
                             struct io_cqring_offsets cq_off; };
    struct io_uring_sqe { uint8_t opcode; uint8_t flags; uint16_t ioprio; int32_t fd; uint64_t off;
                          uint64_t addr; uint32_t len; uint32_t op_flags; uint64_t user_data;
                          uint16_t buf_index; uint16_t personality; uint32_t file_index; uint64_t addr3;
                          uint64_t pad; };
    struct io_uring_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
    struct io_uring_probe_op { uint8_t op; uint8_t resv; uint16_t flags; uint32_t resv2; };
    struct io_uring_probe { uint8_t last_op; uint8_t ops_len; uint16_t resv; uint32_t resv2[3];
                            struct io_uring_probe_op ops[256]; };
    struct iovec { void *iov_base; size_t iov_len; };
    """
)
_U64 = (1 << 64) - 1
_NEED_WAKEUP = int(U.SqRingFlag.NEED_WAKEUP)  # plain ints on the per-flush path
_SQ_WAKEUP = int(U.EnterFlag.SQ_WAKEUP)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        hint = ""
        if err in (errno.ENOSYS, errno.EPERM):
            hint = "; io_uring is unavailable here: check /proc/sys/kernel/io_uring_disabled and seccomp"
        elif err == errno.ENOMEM:
            hint = "; the kernel could not pin ring memory: raise RLIMIT_MEMLOCK (ulimit -l)"
        raise OSError(err, f"{what}: {os.strerror(err)}{hint}")
    return ret


class IoUring:
    """One io_uring instance with its rings mapped."""

    def __init__(
        self,
        entries: int = 256,
        *,
        flags: int = 0,
        sq_thread_idle_ms: int = 0,
        sq_thread_cpu: int | None = None,
        cq_entries: int | None = None,
    ) -> None:
        p = ffi.new("struct io_uring_params *")
        p.flags = flags
        if cq_entries:
            p.flags |= U.SetupFlag.CQSIZE
            p.cq_entries = cq_entries
        if sq_thread_cpu is not None:
            p.flags |= U.SetupFlag.SQ_AFF
            p.sq_thread_cpu = sq_thread_cpu
        p.sq_thread_idle = sq_thread_idle_ms
        self.fd = _check(native.syscall(U.NR_IO_URING_SETUP, entries, int(ffi.cast("uintptr_t", p))), "io_uring_setup")
        self._fd_guards = [forksafety.close_in_child(self.fd)]  # with the fd a child could map the rings again
        self.closed = False
        self.params = p
        self.flags = int(p.flags)
        self.features = int(p.features)
        self._maps: list[forksafety.SharedMapping] = []
        try:
            self._map_rings(p)
        except BaseException:
            self.close()
            raise
        self.sq_entries = int(p.sq_entries)
        self.cq_entries = int(p.cq_entries)
        self._sqpoll = bool(self.flags & U.SetupFlag.SQPOLL)
        self._sq_tail = int(self._sq_tail_p[0])
        self._to_submit = 0
        self.enter_calls = 0
        forksafety.register(self)

    def _mmap(self, size: int, offset: int) -> Any:
        try:
            m = forksafety.SharedMapping(size, self.fd, offset, populate=True)
        except OSError as exc:
            raise OSError(exc.errno, f"mmap of the io_uring at offset {offset:#x}: {exc.strerror}") from exc
        self._maps.append(m)
        return ffi.cast("char *", m.address)

    def _map_rings(self, p: Any) -> None:
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * ffi.sizeof("struct io_uring_cqe")
        if p.features & U.Feature.SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        sq = ffi.cast("char *", self._mmap(sq_size, U.OFF_SQ_RING))
        cq = sq if p.features & U.Feature.SINGLE_MMAP else ffi.cast("char *", self._mmap(cq_size, U.OFF_CQ_RING))
        sqes = self._mmap(p.sq_entries * ffi.sizeof("struct io_uring_sqe"), U.OFF_SQES)

        def u32(base: Any, off: int) -> Any:
            return ffi.cast("uint32_t *", base + off)

        self._sq_head_p = u32(sq, p.sq_off.head)
        self._sq_tail_p = u32(sq, p.sq_off.tail)
        self._sq_mask = int(u32(sq, p.sq_off.ring_mask)[0])
        self._sq_flags_p = u32(sq, p.sq_off.flags)
        self._sq_array = u32(sq, p.sq_off.array)
        self._cq_head_p = u32(cq, p.cq_off.head)
        self._cq_tail_p = u32(cq, p.cq_off.tail)
        self._cq_mask = int(u32(cq, p.cq_off.ring_mask)[0])
        self._cq_flags_p = u32(cq, p.cq_off.flags)
        self._cqes = ffi.cast("struct io_uring_cqe *", cq + p.cq_off.cqes)
        self._sqes = ffi.cast("struct io_uring_sqe *", sqes)

    # Submission ------------------------------------------------------------------

    def sq_space_left(self) -> int:
        """Free SQ slots (the kernel frees a slot once it has consumed the SQE)."""
        return self.sq_entries - ((self._sq_tail - int(self._sq_head_p[0])) & 0xFFFF_FFFF)

    def prep(self, user_data: int, spec: SqeSpec) -> bool:
        """Write *spec* into the next SQE; ``False`` when the SQ is full. Not visible until :meth:`submit`."""
        if self.sq_space_left() <= 0:
            return False
        tail = self._sq_tail
        idx = tail & self._sq_mask
        sqe = self._sqes[idx]
        sqe.opcode = spec.opcode
        sqe.flags = spec.flags
        sqe.ioprio = spec.ioprio
        sqe.fd = spec.fd
        sqe.off = spec.off & _U64
        sqe.addr = spec.addr & _U64
        sqe.len = spec.len
        sqe.op_flags = spec.op_flags
        sqe.user_data = user_data
        sqe.buf_index = spec.buf_index
        sqe.personality = spec.personality
        sqe.file_index = spec.file_index
        sqe.addr3 = spec.addr3 & _U64
        sqe.pad = 0
        self._sq_array[idx] = idx
        self._sq_tail = (tail + 1) & 0xFFFF_FFFF
        self._to_submit += 1
        if self._sqpoll:
            self._sq_tail_p[0] = self._sq_tail  # the poller thread picks it up as soon as it is published
        return True

    def pending_submit(self) -> int:
        """SQEs prepared but not yet handed to the kernel."""
        return self._to_submit

    def submit(self, wait_nr: int = 0) -> int:
        """Publish queued SQEs and enter the kernel if needed; return how many were handed over.

        With SQPOLL the kernel thread consumes the SQ on its own: the
        syscall is made only to wake it (NEED_WAKEUP) or to wait.
        """
        n = self._to_submit
        self._sq_tail_p[0] = self._sq_tail
        flags = int(U.EnterFlag.GETEVENTS) if wait_nr > 0 else 0
        if self._sqpoll:
            if self._sq_flags_p[0] & _NEED_WAKEUP:
                flags |= _SQ_WAKEUP
            elif not wait_nr:
                self._to_submit = 0
                return n
            to_submit = n
        else:
            if not n and not wait_nr:
                return 0
            to_submit = n
        while True:
            self.enter_calls += 1
            ret = native.syscall(U.NR_IO_URING_ENTER, self.fd, to_submit, wait_nr, int(flags), 0, 0)
            if ret == -errno.EINTR:
                continue
            if ret in (-errno.EAGAIN, -errno.EBUSY):
                return 0
            _check(ret, "io_uring_enter")
            break
        self._to_submit = 0 if self._sqpoll else max(0, n - ret)
        return n if self._sqpoll else ret

    def set_eventfd_enabled(self, enabled: bool) -> None:
        """Turn the registered eventfd's signal on or off (IORING_CQ_EVENTFD_DISABLED; CQEs still post)."""
        flags = int(self._cq_flags_p[0])
        bit = int(U.CqRingFlag.EVENTFD_DISABLED)
        self._cq_flags_p[0] = flags & ~bit if enabled else flags | bit

    def adopt_external(self, unsubmitted: int) -> None:
        """Take over SQEs that another writer (the express lane) published; *unsubmitted* still need an enter."""
        self._sq_tail = int(self._sq_tail_p[0])
        self._to_submit += unsubmitted

    def addresses(self) -> dict[str, int]:
        """Raw addresses of the ring's fields, for code that fills SQEs itself."""

        def a(p: Any) -> int:
            return int(ffi.cast("uintptr_t", p))

        return {
            "sq_head": a(self._sq_head_p), "sq_tail": a(self._sq_tail_p), "sq_flags": a(self._sq_flags_p),
            "sq_array": a(self._sq_array), "cq_head": a(self._cq_head_p), "cq_tail": a(self._cq_tail_p),
            "sqes": a(self._sqes), "cqes": a(self._cqes),
        }  # fmt: skip

    # Completion ----------------------------------------------------------------------

    def cq_ready(self) -> int:
        """CQEs posted and not yet reaped."""
        return (int(self._cq_tail_p[0]) - int(self._cq_head_p[0])) & 0xFFFF_FFFF

    def reap(self, max_count: int = 64) -> list[IoCompletion]:
        """Take up to *max_count* CQEs."""
        head = int(self._cq_head_p[0])
        tail = int(self._cq_tail_p[0])
        n = min((tail - head) & 0xFFFF_FFFF, max_count)
        if not n:
            return []
        out = []
        cqes, mask = self._cqes, self._cq_mask
        for i in range(n):
            c = cqes[(head + i) & mask]
            out.append(IoCompletion(int(c.user_data), int(c.res), int(c.flags)))
        self._cq_head_p[0] = (head + n) & 0xFFFF_FFFF
        return out

    # Registration --------------------------------------------------------------------

    def register(self, opcode: int, arg: int, nr_args: int) -> int:
        """``io_uring_register``; returns its result or raises ``OSError``."""
        ret = native.syscall(U.NR_IO_URING_REGISTER, self.fd, opcode, arg, nr_args, 0, 0)
        return _check(ret, f"io_uring_register({U.Register(opcode).name})")

    def probe(self) -> frozenset[int]:
        """Opcodes the running kernel supports."""
        pr = ffi.new("struct io_uring_probe *")
        self.register(U.Register.REGISTER_PROBE, int(ffi.cast("uintptr_t", pr)), 256)
        return frozenset(int(pr.ops[i].op) for i in range(pr.ops_len) if pr.ops[i].flags & U.IO_URING_OP_SUPPORTED)

    def probe_last_op(self) -> int:
        """The highest opcode number this kernel knows."""
        pr = ffi.new("struct io_uring_probe *")
        self.register(U.Register.REGISTER_PROBE, int(ffi.cast("uintptr_t", pr)), 256)
        return int(pr.last_op)

    def register_eventfd(self, fd: int) -> None:
        """Signal eventfd *fd* on every CQE.

        The eventfd wakes whoever drives this ring (the dispatcher): it is
        closed in a forked child too, for as long as this ring is open.
        """
        val = ffi.new("int *", fd)
        self.register(U.Register.REGISTER_EVENTFD, int(ffi.cast("uintptr_t", val)), 1)
        self._fd_guards.append(forksafety.close_in_child(fd))

    def register_buffers(self, buffers: list[tuple[int, int]]) -> None:
        """Register ``(address, length)`` buffers for READ_FIXED/WRITE_FIXED."""
        iov = ffi.new("struct iovec[]", len(buffers))
        for i, (addr, length) in enumerate(buffers):
            iov[i].iov_base = ffi.cast("void *", addr)
            iov[i].iov_len = length
        self.register(U.Register.REGISTER_BUFFERS, int(ffi.cast("uintptr_t", iov)), len(buffers))

    def unregister_buffers(self) -> None:
        """Drop registered buffers."""
        self.register(U.Register.UNREGISTER_BUFFERS, 0, 0)

    def register_files(self, fds: list[int]) -> None:
        """Register a file table; -1 leaves a slot empty (sparse)."""
        arr = ffi.new("int[]", fds)
        self.register(U.Register.REGISTER_FILES, int(ffi.cast("uintptr_t", arr)), len(fds))

    def register_files_update(self, offset: int, fds: list[int]) -> int:
        """Replace table slots from *offset*; return how many were updated."""
        arr = ffi.new("int[]", fds)
        upd = ffi.new("uint64_t[3]", [offset, int(ffi.cast("uintptr_t", arr)), 0])  # offset(u32)+resv, fds
        upd[0] = offset
        return self.register(U.Register.REGISTER_FILES_UPDATE, int(ffi.cast("uintptr_t", upd)), len(fds))

    def close(self) -> None:
        """Unmap the rings and close the ring fd. Idempotent."""
        if self.closed:
            return
        self.closed = True
        forksafety.unregister(self)
        for m in self._maps:
            m.close()
        self._maps = []
        for guard in self._fd_guards:
            guard.release()
        self._fd_guards = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def drop_after_fork(self) -> None:
        """In a forked child: the rings are not mapped here and the guards close the descriptors.

        Every pointer into the rings is swapped for one that raises
        ``ClosedError``, so this copy can neither fault nor reach the parent's
        ring; :meth:`close` then has nothing left to do.
        """
        self.closed = True
        self.fd = -1
        self._maps = []  # each mapping forgets itself, without unmapping
        self._fd_guards = []
        dead = forksafety.inherited("this io_uring")
        self._sq_head_p = self._sq_tail_p = self._sq_flags_p = self._sq_array = dead
        self._cq_head_p = self._cq_tail_p = self._cq_flags_p = dead
        self._cqes = self._sqes = dead
