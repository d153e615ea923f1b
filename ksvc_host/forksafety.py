"""What a child of ``fork()`` must not inherit from its parent's KSVC objects.

A forked child gets a copy of every descriptor and every ``MAP_SHARED``
mapping, and KSVC's are capabilities: through the channel's submit ring and
the dispatcher's eventfd a child would have the parent execute system
calls with the parent's credentials, and through an io_uring's rings or
descriptor the parent's SQ thread would run the child's SQEs. A child that
dropped its privileges (``setuid``) must keep none of them. So:

* shared memory is mapped through :class:`SharedMapping`: ``MADV_DONTFORK``,
  so the child has nothing at those addresses; every view taken with
  :meth:`SharedMapping.view` is released in the child (a ``ValueError`` on
  use, never a SIGSEGV), and the child never unmaps the range (by then it
  may hold the child's own memory);
* descriptors are registered with :func:`close_in_child` and closed in the
  child, by identity: a number the parent reused for another file is left
  alone;
* other objects holding such state :func:`register` and get
  ``drop_after_fork()`` called in the child, to swap in what fails cleanly.

The handler runs in the child right after ``fork()``, where only the forking
thread exists: it takes no lock (another thread of the parent may have held
one at the fork). Registration is a single dictionary store for the same
reason.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol

from ksvc_host import native


class ForkSafe(Protocol):
    """An object that must give up inherited state in a forked child."""

    def drop_after_fork(self) -> None:
        """Called once in the child, right after ``fork()``; must not touch the parent's memory."""


_LIVE: dict[int, weakref.ref[Any]] = {}


def register(obj: ForkSafe) -> None:
    """Have ``obj.drop_after_fork()`` called in the next forked child (held weakly)."""
    key = id(obj)

    def gone(ref: weakref.ref[Any], key: int = key) -> None:
        if _LIVE.get(key) is ref:
            _LIVE.pop(key, None)

    _LIVE[key] = weakref.ref(obj, gone)


def unregister(obj: ForkSafe) -> None:
    """Undo :func:`register` (the object released its state itself)."""
    ref = _LIVE.get(id(obj))
    if ref is not None and ref() is obj:
        _LIVE.pop(id(obj), None)


def inherited(what: str) -> Any:
    """A stand-in for a pointer into memory a forked child does not have: any use raises ``ClosedError``."""
    return _Inherited(what)


class _Inherited:
    """Replaces a cffi pointer in a forked child: indexing, attributes and arithmetic raise."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def _refuse(self, *_args: object) -> Any:
        from ksvc_host.errors import ClosedError

        raise ClosedError(
            f"{self._what} belongs to the parent process; this forked child (pid {os.getpid()}) "
            "does not have it: open a new instance here"
        )

    __getitem__ = __setitem__ = __add__ = __radd__ = __int__ = __index__ = _refuse

    def __getattr__(self, name: str) -> Any:
        return self._refuse()

    def __repr__(self) -> str:
        return f"<{self._what}, inherited through fork(): unusable>"


class _Region:
    """The address range itself: unmapped once, only by the process that mapped it."""

    __slots__ = ("address", "length", "owner", "mapped")

    def __init__(self, address: int, length: int) -> None:
        self.address, self.length = address, length
        self.owner = os.getpid()
        self.mapped = True

    def unmap(self, _ptr: Any = None) -> None:
        # In a forked child the range is absent (MADV_DONTFORK) and may since hold the child's own
        # memory: munmap there would destroy that. The pid check also covers a fork that ran no
        # Python at-fork handlers.
        if self.mapped and os.getpid() == self.owner:
            self.mapped = False
            native.unmap(self.address, self.length)


class SharedMapping:
    """``MAP_SHARED`` memory (of *fd*, or anonymous) that a forked child does not inherit.

    Python code reaches it through :meth:`view` only; C code through
    :attr:`address`. The range stays mapped while this object or any view
    is alive (a view never dangles), and is unmapped when the last of them
    goes, or at :meth:`close`.
    """

    def __init__(self, length: int, fd: int = -1, offset: int = 0, *, populate: bool = False) -> None:
        self.address = native.map_shared(length, fd, offset, populate=populate)
        self.length = length
        self._region = _Region(self.address, length)
        # Every buffer made from this pointer keeps it alive; when the last one goes, the range is unmapped.
        self._ptr: Any = native.ffi.gc(native.ffi.cast("char *", self.address), self._region.unmap)
        self._views: list[weakref.ref[memoryview]] = []
        self.closed = False
        self.inherited = False
        """True in a forked child: the memory is not there."""
        register(self)

    def view(self, start: int = 0, stop: int | None = None) -> memoryview:
        """A writable memoryview of bytes [*start*, *stop*); released at :meth:`close` and in a forked child."""
        if self._ptr is None:
            from ksvc_host.errors import ClosedError

            raise ClosedError("the mapping is closed" if not self.inherited else "the mapping belongs to the parent")
        v = memoryview(native.ffi.buffer(self._ptr, self.length))[start:stop]
        self._views.append(weakref.ref(v))
        return v

    def _release_views(self, *, strict: bool) -> None:
        views, self._views = self._views, []
        for ref in views:
            v = ref()
            if v is None:
                continue
            try:
                v.release()
            except BufferError:
                if strict:
                    raise  # exported to C right now: closing would leave it dangling (as mmap.close refuses)

    def close(self) -> None:
        """Release the views and unmap (at once, unless something else still holds a view). Idempotent."""
        if self.closed:
            return
        self._release_views(strict=True)
        self.closed = True
        unregister(self)
        self._ptr = None  # the last reference to the gc pointer: it unmaps now

    def drop_after_fork(self) -> None:
        """In a forked child: the range is not mapped here; make every view fail, never unmap."""
        self._region.mapped = False
        self.closed = self.inherited = True
        self._release_views(strict=False)
        self._ptr = None


_EVENTFD_LINK = "anon_inode:[eventfd]"


def _identity(fd: int) -> tuple[int, int, str] | None:
    """What tells this open file from another one that got the same number later."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    # Every eventfd (and every io_uring) shares one anonymous inode: the eventfd's id tells them apart.
    tag = ""
    try:
        if os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD_LINK:
            with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
                for line in f:
                    if line.startswith(b"eventfd-id:"):
                        tag = line.split(b":", 1)[1].strip().decode()
                        break
    except OSError:
        pass  # no /proc: the inode alone has to do
    return st.st_dev, st.st_ino, tag


class ChildCloses:
    """A descriptor closed in a forked child (see :func:`close_in_child`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._identity = _identity(fd)
        register(self)

    def release(self) -> None:
        """The owner closes (or closed) the descriptor itself: forget it."""
        unregister(self)
        self.fd = -1

    def drop_after_fork(self) -> None:
        """Close the inherited descriptor, if the number still names the same open file."""
        fd, self.fd = self.fd, -1
        if fd >= 0 and self._identity is not None and _identity(fd) == self._identity:
            os.close(fd)


def close_in_child(fd: int) -> ChildCloses:
    """Close *fd* in every forked child; keep the returned guard as long as *fd* is open, then ``release()`` it."""
    return ChildCloses(fd)


def _after_fork_in_child() -> None:
    objects = [ref() for ref in _LIVE.values()]
    _LIVE.clear()  # all of it belonged to the parent; the child's own objects register anew
    failure: BaseException | None = None
    for obj in objects:
        if obj is None:
            continue
        try:
            obj.drop_after_fork()
        except Exception as exc:  # one failure must not leave the others live in the child
            failure = failure or exc
    if failure is not None:
        raise failure  # reported by Python as an exception in an at-fork handler


os.register_at_fork(after_in_child=_after_fork_in_child)
