"""A forked child keeps nothing of its parent's instance: no ring mapping, no descriptor, no crash.

Each test forks (``os.fork``), runs its checks in the child, which reports
as JSON through a pipe and leaves with ``os._exit``; the parent waits at
most a few seconds (then kills the child and fails) and asserts the child
neither crashed nor found anything of the parent's. The attacks are real:
a child that dropped to uid 65534 writes a ``mkdir`` submit entry into the
channel, or a MKDIRAT SQE into an SQPOLL ring, where a root parent would
run it.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ksvc_host as ksvc
from ksvc_host import native
from ksvc_host.abi import io_uring as U
from ksvc_host.abi import layout as L
from ksvc_host.abi.syscalls import SYSCALLS

CHILD_TIMEOUT = 5.0
NOBODY = 65534
MAP_FIXED_NOREPLACE = 0x100000
_MMAP_FAILED = ctypes.c_void_p(-1).value
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def in_child(body: Callable[[], dict[str, Any]], timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
    """Run *body* in a forked child; return what it reported. Fails on a crash, an exception or a hang."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(r)
            out: dict[str, Any] = {"ok": True, **body()}
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        os.write(w, json.dumps(out).encode()[:60000])  # below the pipe's capacity: no reader needed yet
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            pytest.fail(f"the forked child did not finish within {timeout} s")
        time.sleep(0.005)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    assert not os.WIFSIGNALED(status), f"the child died of signal {os.WTERMSIG(status)} (touched unmapped memory?)"
    assert os.WEXITSTATUS(status) == 0
    report: dict[str, Any] = json.loads(data)
    assert report["ok"], report["trace"]
    return report


def drop_privileges() -> None:
    """As a setuid daemon's child does."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def mapped_ranges() -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = line.split()[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def absent(addresses: dict[str, int]) -> dict[str, bool]:
    """For each address: True when nothing is mapped there and a write to it fails with EFAULT."""
    ranges = mapped_ranges()
    return {
        name: not any(lo <= a < hi for lo, hi in ranges) and native.write_user(a, b"\0") == -errno.EFAULT
        for name, a in addresses.items()
    }


def identity(fd: int) -> tuple[str, str]:
    """What names an open file: the /proc link and, for an eventfd, its id."""
    link = os.readlink(f"/proc/self/fd/{fd}")
    tag = ""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("eventfd-id:"):
                tag = line.split(":", 1)[1].strip()
    return link, tag


def still_open(recorded: dict[str, tuple[int, tuple[str, str]]]) -> list[str]:
    """Names of recorded descriptors that are still the same open file in this process."""
    out = []
    for name, (fd, ident) in recorded.items():
        try:
            if identity(fd) == ident:
                out.append(name)
        except FileNotFoundError:
            pass  # closed
    return out


def page_address(k: ksvc.Ksvc) -> int:
    return native.address_of(native.ffi.from_buffer(k.instance.channel.page))


def channel_addresses(k: ksvc.Ksvc) -> dict[str, int]:
    ch = k.instance.channel
    return {"submit ring": ch.submit_ring.address, "completion ring": ch.completion_ring.address,
            "shared page": page_address(k)}  # fmt: skip


def uring_addresses(k: ksvc.Ksvc) -> dict[str, int]:
    backend: Any = k.instance.io_backend
    out = {}
    for label, ring in (("ring", backend.ring), ("assist ring", getattr(backend, "assist", None))):
        if ring is not None:
            out.update({f"{label} {name}": a for name, a in ring.addresses().items()})
    return out


def buffer_addresses(k: ksvc.Ksvc) -> dict[str, int]:
    """Memory a buffer provider shares with the kernel (registered pools, provided rings)."""
    bp: Any = k.instance.buffer_provider
    out = {}
    for attr in ("_map", "_ring_mem", "_bufs"):
        m = getattr(bp, attr, None)
        if m is not None:
            out[f"{bp.name} {attr}"] = m.address
    return out


def descriptors(k: ksvc.Ksvc) -> dict[str, tuple[int, tuple[str, str]]]:
    backend: Any = k.instance.io_backend
    fds = {"io_uring": backend.ring.fd, "dispatcher eventfd": k.instance.dispatcher.fileno()}
    if getattr(backend, "assist", None) is not None:
        fds["assist io_uring"] = backend.assist.fd
    return {name: (fd, identity(fd)) for name, fd in fds.items()}


def channel_memfds() -> list[str]:
    """This process's descriptors of channel memfds."""
    out = []
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{n}").startswith("/memfd:ksvc-channel"):
                out.append(n)
        except FileNotFoundError:
            pass  # the listing's own descriptor
    return out


def map_files_entry(address: int) -> str:
    """The /proc/PID/map_files name of the mapping holding *address* in this process."""
    for lo, hi in mapped_ranges():
        if lo <= address < hi:
            return f"{lo:x}-{hi:x}"
    raise AssertionError(f"{address:#x} is not mapped")


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    payload = os.urandom(1 << 16)
    path = tmp_path / "data"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    yield fd, payload
    os.close(fd)


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test drops the child to uid 65534, as a privilege-separated daemon does")


def _sqpoll() -> None:
    try:
        import ksvc_sqpoll  # noqa: F401
    except ImportError:
        pytest.skip("plugin ksvc-sqpoll is not installed (pip install plugins/ksvc-sqpoll)")


def _open_server() -> ksvc.Ksvc:
    for module, dist in (("ksvc_sqpoll", "ksvc-sqpoll"), ("ksvc_lazypool", "ksvc-lazypool"),
                         ("ksvc_futex", "ksvc-futex"), ("ksvc_regbuf", "ksvc-regbuf")):  # fmt: skip
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"the server preset needs {dist}, which is not installed (pip install plugins/{dist})")
    try:
        # Every kind of mapping a stack can have: the SQ thread's rings, registered buffers.
        return ksvc.open(preset="server", io_backend="sqpoll", buffer_provider="registered")
    except OSError as exc:
        pytest.skip(f"the server preset cannot start here (SQPOLL or buffer pinning refused): {exc}")


# (a) (b) (d): the channel -------------------------------------------------------------------------


def test_the_child_has_no_ring_mapping(data: tuple[int, bytes]) -> None:
    with ksvc.open() as k:
        addresses = {**channel_addresses(k), **uring_addresses(k)}
        report = in_child(lambda: {"absent": absent(addresses)})
        assert report["absent"] == {name: True for name in addresses}
        fd, payload = data
        assert k.pread(fd, 100, 7) == payload[7:107]  # the parent's mappings are untouched


def test_the_child_has_no_descriptor_of_the_instance() -> None:
    with ksvc.open() as k:
        recorded = descriptors(k)
        assert not channel_memfds(), "the channel's memfd stays open after it was mapped"
        report = in_child(lambda: {"open": still_open(recorded), "memfds": channel_memfds()})
        assert report == {"ok": True, "open": [], "memfds": []}
        assert still_open(recorded) == list(recorded)  # the parent's own are untouched


def test_the_notifier_eventfd_is_closed_in_the_child() -> None:
    """Needs ``EventFdNotifier`` (plugins/ksvc-basic/ksvc_basic/eventfd_notifier.py) to register with forksafety."""
    with ksvc.open(notifier="eventfd") as k:
        fd = k.instance.notifier.fileno()
        assert fd is not None
        recorded = {"notifier eventfd": (fd, identity(fd))}
        assert in_child(lambda: {"open": still_open(recorded)})["open"] == []


def test_the_memfd_is_private_and_sealed() -> None:
    _needs_root()  # reading /proc/self/map_files needs CAP_SYS_ADMIN
    import fcntl

    with ksvc.open() as k:
        entry = f"/proc/self/map_files/{map_files_entry(k.instance.channel.submit_ring.address)}"
        st = os.stat(entry)
        assert st.st_mode & 0o777 == 0o600, f"the channel memfd has mode {st.st_mode & 0o777:o}"
        fd = os.open(entry, os.O_RDONLY)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        finally:
            os.close(fd)
        for seal in (fcntl.F_SEAL_SEAL, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW):
            assert seals & seal, f"seal {seal:#x} missing from {seals:#x}"


def test_a_privilege_dropped_child_cannot_reopen_the_memfd() -> None:
    _needs_root()
    with ksvc.open() as k:
        parent = os.getpid()
        entry = map_files_entry(k.instance.channel.submit_ring.address)

        def body() -> dict[str, Any]:
            inherited = [f"/proc/self/fd/{n}" for n in os.listdir("/proc/self/fd")]  # listed while still root
            drop_privileges()
            opened: list[str] = []
            refused: dict[str, str] = {}
            # Every way back to the memfd: the parent's descriptors and mapping, and our own inherited descriptors.
            paths = [f"/proc/{parent}/map_files/{entry}"] + [f"/proc/{parent}/fd/{n}" for n in range(256)] + inherited
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDWR)
                except OSError as exc:
                    refused[path] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    continue
                try:
                    if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ksvc-channel"):
                        opened.append(path)
                finally:
                    os.close(fd)
            return {"opened": opened, "map_files": refused.get(paths[0], "opened")}

        report = in_child(body)
        assert report["opened"] == []
        assert report["map_files"] in ("EPERM", "EACCES")


def test_a_privilege_dropped_child_cannot_make_the_parent_run_a_syscall(tmp_path: Path) -> None:
    _needs_root()
    target = tmp_path / "made-by-the-child"
    path = native.ffi.new("char[]", bytes(target))  # in the parent's memory: the parent's dispatcher reads it
    with ksvc.open() as k:
        ring = k.instance.channel.submit_ring
        tail_at, base = ring.address + L.RING_TAIL_OFFSET, ring.address + L.RING_ENTRIES_OFFSET
        mask, wake_fd = ring.mask, k.instance.dispatcher.fileno()
        entry_args = (native.address_of(path), 0o755, 0, 0, 0, 0)

        def body() -> dict[str, Any]:
            drop_privileges()
            try:
                os.mkdir(target)
                return {"sanity": "the child could create it itself"}
            except PermissionError:
                pass
            tail = native.read_user(tail_at, 8)
            if isinstance(tail, int):
                return {"read tail": tail}
            t = struct.unpack("<Q", tail)[0]
            entry = L.SUBMIT_ENTRY.pack(0x7EAD, SYSCALLS["mkdir"], 0, *entry_args)
            wrote = native.write_user(base + (t & mask) * L.SUBMIT_ENTRY_SIZE, entry)
            published = native.write_user(tail_at, struct.pack("<Q", t + 1))
            try:
                os.eventfd_write(wake_fd, 1)
                rang = "rang"
            except OSError as exc:
                rang = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return {"read tail": 0, "wrote": wrote, "published": published, "rang": rang}

        report = in_child(body)
        assert "sanity" not in report
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not target.exists():
            time.sleep(0.02)
        assert not target.exists(), "the parent executed the child's mkdir"
        assert report["read tail"] == -errno.EFAULT
        k.mkdir(tmp_path / "made-by-the-parent", 0o755)  # the parent's channel still works
        assert (tmp_path / "made-by-the-parent").is_dir()


def test_the_child_gets_errors_not_a_crash(data: tuple[int, bytes]) -> None:
    fd, payload = data
    k = ksvc.open()
    try:
        ring_address = k.instance.channel.submit_ring.address
        backend: Any = k.instance.io_backend

        def body() -> dict[str, Any]:
            errors: dict[str, str] = {}
            attempts: dict[str, Callable[[], object]] = {
                "getpid": k.getpid,
                "pread": lambda: k.pread(fd, 10, 0),
                "pread_many": lambda: k.pread_many(fd, 10, [0, 10]),
                "raw submit": lambda: k.raw.submit([(SYSCALLS["getpid"], (), 0)]),
                "shared page": lambda: k.instance.shared_page.uid,
                "submit ring": lambda: k.instance.channel.submit_ring.tail,
                "completion ring": lambda: k.instance.channel.completion_ring.head,
                "page field": lambda: k.instance.channel.read_page_field("pid"),
                "io_uring": lambda: backend.completions_ready(),
                "io_uring submit": lambda: backend.submit(1, _nop()),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                    errors[name] = "used"
                except Exception as exc:  # noqa: BLE001 - any clean exception will do; a crash fails
                    errors[name] = type(exc).__name__
            k.close()  # closing the inherited front end must neither crash nor touch the parent
            # The child's own memory where the parent's ring was: dropping the inherited objects must not unmap it.
            mine = _libc.mmap(ring_address & ~4095, 4096, 3, 0x22 | MAP_FIXED_NOREPLACE, -1, 0)
            placed = mine not in (None, _MMAP_FAILED)
            if placed:
                ctypes.memset(mine, 0x42, 4096)
            gc.collect()
            survived = placed and native.read_user(ring_address & ~4095, 4) == b"BBBB"
            with ksvc.open() as fresh:  # the child can have an instance of its own
                own = fresh.pread(fd, 10, 0)
            return {"errors": errors, "placed": placed, "survived": survived, "own": own.hex()}

        report = in_child(body)
        assert all(v != "used" for v in report["errors"].values()), report["errors"]
        assert report["errors"]["getpid"] == report["errors"]["pread"] == "ClosedError"
        assert report["placed"], "the parent's ring address is still taken in the child"
        assert report["survived"], "dropping the inherited channel unmapped the child's own memory"
        assert bytes.fromhex(report["own"]) == payload[:10]
        assert k.pread(fd, 10, 0) == payload[:10]
    finally:
        k.close()


def _nop() -> Any:
    from ksvc_host.traits.io_backend import SqeSpec

    return SqeSpec(U.IoringOp.NOP, -1)


# (e): SQPOLL and the server preset ----------------------------------------------------------------


def test_sqpoll_rings_and_buffers_stay_with_the_parent(data: tuple[int, bytes]) -> None:
    fd, payload = data
    k = _open_server()
    try:
        addresses = {**channel_addresses(k), **uring_addresses(k), **buffer_addresses(k)}
        assert any(name.startswith("registered") for name in addresses)
        recorded = descriptors(k)
        report = in_child(lambda: {"absent": absent(addresses), "open": still_open(recorded)})
        assert report["absent"] == {name: True for name in addresses}
        assert report["open"] == []
        assert k.pread(fd, 100, 3) == payload[3:103]
        assert [k.pread(fd, 64, o) for o in (0, 64, 128)] == [payload[:64], payload[64:128], payload[128:192]]
    finally:
        k.close()


def test_provided_buffer_ring_stays_with_the_parent() -> None:
    try:
        k = ksvc.open(buffer_provider="provided-ring")
    except (OSError, ksvc.SelectionError) as exc:
        pytest.skip(f"provided buffer rings are unavailable here: {exc}")
    try:
        addresses = buffer_addresses(k)
        assert len(addresses) == 2
        assert in_child(lambda: {"absent": absent(addresses)})["absent"] == {name: True for name in addresses}
    finally:
        k.close()


def test_a_privilege_dropped_child_cannot_feed_the_sq_thread(tmp_path: Path) -> None:
    _needs_root()
    target = tmp_path / "made-by-the-sq-thread"
    path = native.ffi.new("char[]", bytes(target))  # the SQ thread reads the parent's memory
    k = _open_server()
    try:
        ring: Any = k.instance.io_backend.ring  # type: ignore[attr-defined]
        assert ring.flags & U.SetupFlag.SQPOLL
        a, ring_fd, sq_mask = ring.addresses(), ring.fd, ring._sq_mask
        sqe = struct.pack("<BBHiQQIIQHHIQQ", U.IoringOp.MKDIRAT, 0, 0, -100, 0, native.address_of(path),
                          0o755, 0, 0x7EAD, 0, 0, 0, 0, 0)  # fmt: skip

        def body() -> dict[str, Any]:
            drop_privileges()
            out: dict[str, Any] = {}
            tail = native.read_user(a["sq_tail"], 4)
            out["read tail"] = tail if isinstance(tail, int) else 0
            if not isinstance(tail, int):
                t = struct.unpack("<I", tail)[0]
                idx = t & sq_mask
                out["sqe"] = native.write_user(a["sqes"] + idx * 64, sqe)
                native.write_user(a["sq_array"] + idx * 4, struct.pack("<I", idx))
                native.write_user(a["sq_tail"], struct.pack("<I", (t + 1) & 0xFFFF_FFFF))
            # Even without the mapping, the descriptor would let us map the rings again, or wake the thread.
            wake = native.syscall(U.NR_IO_URING_ENTER, ring_fd, 0, 0, int(U.EnterFlag.SQ_WAKEUP), 0, 0)
            out["enter"] = errno.errorcode.get(-wake, wake) if wake < 0 else wake
            return out

        report = in_child(body)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not target.exists():
            time.sleep(0.02)
        assert not target.exists(), "the parent's SQ thread ran the child's SQE"
        assert report["read tail"] == -errno.EFAULT
        assert report["enter"] == "EBADF"
        k.mkdir(tmp_path / "by-the-parent", 0o755)  # the parent's ring still works
        assert (tmp_path / "by-the-parent").is_dir()
    finally:
        k.close()


# The parent, forking while its dispatcher is busy ------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "server"])
def test_the_parent_keeps_working_when_it_forks_while_busy(data: tuple[int, bytes], preset: str) -> None:
    fd, payload = data
    k = _open_server() if preset == "server" else ksvc.open()
    try:
        r, w = os.pipe()
        pending: dict[str, Any] = {}
        stop = threading.Event()
        failures: list[BaseException] = []

        def blocked_read() -> None:
            pending["read"] = k.read(r, 5)  # in flight across every fork below

        def reads() -> None:
            try:
                offs = [i * 512 for i in range(100)]
                while not stop.is_set():
                    batch = k.batch()  # a hundred entries at once: the dispatcher stays busy
                    for o in offs:
                        batch.pread(fd, 512, o)
                    assert batch.run() == [payload[o : o + 512] for o in offs]
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=blocked_read), threading.Thread(target=reads)]
        for t in threads:
            t.start()
        addresses = {**channel_addresses(k), **uring_addresses(k)}
        try:
            for _ in range(5):
                report = in_child(lambda: {"absent": all(absent(addresses).values())})
                assert report["absent"]
                assert k.pread(fd, 64, 100) == payload[100:164]
        finally:
            stop.set()
            os.write(w, b"hello")
            for t in threads:
                t.join(10)
        assert not failures, failures
        assert pending["read"] == b"hello"
        assert [k.pread(fd, 16, o) for o in (0, 16)] == [payload[:16], payload[16:32]]
        os.close(r)
        os.close(w)
    finally:
        k.close()
