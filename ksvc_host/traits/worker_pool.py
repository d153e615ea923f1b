"""WorkerPool: threads that run Tier 2 syscalls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class WorkerPool(Protocol):
    """Runs delegated syscalls on threads.

    Contract: ``enqueue`` never blocks (a full queue returns ``False``:
    back-pressure); each accepted job yields exactly one completion
    ``(token, result)`` with ``result`` the syscall's return value or
    ``-errno``; a worker runs only syscalls the ``allowed`` predicate given
    at construction accepts (others complete with ``-EPERM``); after posting
    completions a worker calls the wake-up callback; ``shutdown`` runs what
    is queued, then stops the threads.
    """

    name: str

    def enqueue(self, token: int, nr: int, args: tuple[int, ...]) -> bool:
        """Queue syscall *nr* with six raw *args*; ``False`` when the queue is full."""
        ...

    def poll_completions(self, max_count: int = 64) -> list[tuple[int, int]]:
        """Up to *max_count* finished jobs as ``(token, result)``, without waiting."""
        ...

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        """Call *callback* (from a worker thread) after a completion is posted."""
        ...

    @property
    def busy(self) -> int:
        """Workers running a syscall right now."""
        ...

    @property
    def total(self) -> int:
        """Worker threads alive."""
        ...

    @property
    def max_workers(self) -> int:
        """The most threads this pool will run."""
        ...

    def pending(self) -> int:
        """Jobs accepted whose completion has not been polled."""
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Finish queued jobs, then stop the threads (joined when *wait*)."""
        ...


@runtime_checkable
class CancellableWorkerPool(Protocol):
    """Optional capability: a pool that can stop a job before it ends (resolved once, when the instance is built).

    Contract: ``cancel(token)`` makes a queued job complete with
    ``-ECANCELED`` without running, and interrupts a running one so that
    its syscall returns (it then completes with ``-ECANCELED`` unless it
    finished first); ``True`` when the job was queued or running.
    ``running(token)`` tells whether a thread is inside the job's syscall
    now: the memory it was given may still be written.
    """

    def cancel(self, token: int) -> bool:
        """Drop a queued job or interrupt a running one."""
        ...

    def running(self, token: int) -> bool:
        """True while a thread is inside the job's syscall."""
        ...
