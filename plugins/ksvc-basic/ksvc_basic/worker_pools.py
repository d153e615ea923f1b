"""Worker pools for Tier 2: ``fixed`` (N threads from the start) and ``inline`` (tests only)."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType

from ksvc_host import native

Executor = Callable[[int, tuple[int, ...]], int]

INTERRUPT_SIGNAL = signal.SIGRTMIN + 6
"""Sent to a worker thread to end the syscall of a job that is cancelled (a real-time signal nobody else uses).

Its handler does nothing: it exists so that the signal interrupts a
blocking syscall (EINTR) instead of killing the process. Python installs
handlers without SA_RESTART, so every blocking call returns.
"""


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """The handler of :data:`INTERRUPT_SIGNAL`: the interruption itself is the point."""


def _install_interrupt_handler() -> bool:
    """Install the handler (possible only on the main thread, once); True when workers can be interrupted."""
    current = signal.getsignal(INTERRUPT_SIGNAL)
    if current is _interrupted:
        return True
    if current not in (signal.SIG_DFL, None) or threading.current_thread() is not threading.main_thread():
        return False  # the program uses the signal, or we cannot install from here
    signal.signal(INTERRUPT_SIGNAL, _interrupted)
    return True


JOIN_S = 0.5
"""How long shutdown waits for each worker thread before interrupting it, and again after."""


def default_workers() -> int:
    """min(8, nproc / 2), at least 1."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class _PoolBase:
    """Completion bookkeeping shared by both pools."""

    name = "base"

    def __init__(self, allowed: Callable[[int], bool] | None, executor: Executor | None) -> None:
        self._allowed = allowed
        self._executor: Executor = executor or native.syscall_u64
        self._done: deque[tuple[int, int]] = deque()
        self._wakeup: Callable[[], None] | None = None
        self._accepted = 0
        self._polled = 0
        self.wakeup_errors = 0
        self._shut = False
        self._busy = 0
        self._jobs_lock = threading.Lock()
        self._running: dict[int, int] = {}
        """token -> ident of the thread inside that job's syscall."""
        self._cancelled: set[int] = set()
        self._can_interrupt = _install_interrupt_handler()

    def set_wakeup(self, callback: Callable[[], None]) -> None:
        """Call *callback* after each posted completion."""
        self._wakeup = callback

    def _run(self, token: int, nr: int, args: tuple[int, ...]) -> None:
        if self._allowed is not None and not self._allowed(nr):
            result = -errno.EPERM  # the router does not allow it: never executed
        else:
            with self._jobs_lock:
                cancelled = token in self._cancelled
                if not cancelled:
                    self._running[token] = threading.get_ident()
            result = -errno.ECANCELED if cancelled else self._execute(token, nr, args)
            with self._jobs_lock:
                self._running.pop(token, None)
                self._cancelled.discard(token)
        self._done.append((token, result))
        cb = self._wakeup
        if cb is not None:
            try:
                cb()
            except Exception:
                self.wakeup_errors += 1

    def _execute(self, token: int, nr: int, args: tuple[int, ...]) -> int:
        try:
            while True:
                result = self._executor(nr, args)
                if result != -errno.EINTR:
                    return result
                if token in self._cancelled:
                    return -errno.ECANCELED  # interrupted on purpose (cancel)
                # Another signal: retry, as os.* does (PEP 475).
        except BaseException:  # even SystemExit in a job must not kill the worker or lose the job
            return -errno.EIO

    def cancel(self, token: int) -> bool:
        """Drop a queued job (it completes with -ECANCELED), or interrupt the syscall of a running one."""
        with self._jobs_lock:
            ident = self._running.get(token)
            if ident is None and not self._dequeue(token):
                return False
            self._cancelled.add(token)
            if ident is not None and self._can_interrupt:
                try:
                    signal.pthread_kill(ident, INTERRUPT_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass
        return True

    def running(self, token: int) -> bool:
        """True while a thread is inside *token*'s syscall (the memory it was given may still be written)."""
        return token in self._running

    def _dequeue(self, token: int) -> bool:
        """Whether *token* waits in the queue (it is then marked and completes without running)."""
        return False

    def _run_counted(self, cv: threading.Condition, token: int, nr: int, args: tuple[int, ...]) -> None:
        """Run a job a worker took (and counted busy) under *cv*; uncount it afterwards."""
        try:
            self._run(token, nr, args)
        finally:
            with cv:
                self._busy -= 1

    @property
    def busy(self) -> int:
        """Workers running a job."""
        return self._busy

    def poll_completions(self, max_count: int = 64) -> list[tuple[int, int]]:
        """Finished jobs, without waiting."""
        out: list[tuple[int, int]] = []
        done = self._done
        while done and len(out) < max_count:
            out.append(done.popleft())
        self._polled += len(out)
        return out

    def pending(self) -> int:
        """Jobs accepted whose completion has not been polled."""
        return self._accepted - self._polled


class QueuedPool(_PoolBase):
    """A bounded job queue served by threads; subclasses decide how a queued job wakes a thread."""

    def __init__(self, allowed: Callable[[int], bool] | None, executor: Executor | None, queue_size: int) -> None:
        super().__init__(allowed, executor)
        self._queue: deque[tuple[int, int, tuple[int, ...]]] = deque()
        self._queue_size = queue_size
        self._cv = threading.Condition(threading.Lock())

    def enqueue(self, token: int, nr: int, args: tuple[int, ...]) -> bool:
        """Queue a job; ``False`` when *queue_size* jobs are already waiting. Never blocks."""
        with self._cv:
            if self._shut:
                raise RuntimeError("worker pool is shut down")
            if len(self._queue) >= self._queue_size:
                return False
            self._queue.append((token, nr, args))
            self._accepted += 1
            self._wake_worker()
        return True

    def _wake_worker(self) -> None:
        """A job was queued (called with the lock held)."""
        self._cv.notify()

    def _dequeue(self, token: int) -> bool:
        with self._cv:
            return any(job[0] == token for job in self._queue)  # it runs as -ECANCELED when taken

    def _live_threads(self) -> list[threading.Thread]:
        """The threads to join at shutdown (called with the lock held)."""
        raise NotImplementedError

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop and (with *wait*) join the threads. Idempotent.

        A thread still inside a syscall after :data:`JOIN_S` is interrupted
        and, if it does not return, left behind (it is a daemon thread): a
        stuck syscall never blocks shutdown.
        """
        with self._cv:
            self._shut = True
            threads = self._live_threads()
            self._cv.notify_all()
        if wait:
            for t in threads:
                t.join(JOIN_S)
                if t.is_alive():
                    with self._jobs_lock:
                        stuck = [tok for tok, ident in self._running.items() if ident == t.ident]
                    for tok in stuck:
                        self.cancel(tok)
                    t.join(JOIN_S)


class FixedPool(QueuedPool):
    """N daemon threads started at construction; a bounded queue; enqueue never blocks."""

    name = "fixed"

    def __init__(
        self,
        *,
        workers: int | None = None,
        queue_size: int = 4096,
        allowed: Callable[[int], bool] | None = None,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(allowed, executor, queue_size)
        n = default_workers() if workers is None else int(workers)
        if n < 1:
            raise ValueError(f"workers must be at least 1, got {n}")
        self._max = n
        self._threads = [threading.Thread(target=self._work, name=f"ksvc-worker-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        cv, queue = self._cv, self._queue
        while True:
            with cv:
                while not queue and not self._shut:
                    cv.wait()
                if not queue:
                    return  # shut down and drained
                token, nr, args = queue.popleft()
                self._busy += 1
            self._run_counted(cv, token, nr, args)

    @property
    def total(self) -> int:
        """Worker threads alive."""
        return sum(t.is_alive() for t in self._threads)

    @property
    def max_workers(self) -> int:
        """Thread count (fixed)."""
        return self._max

    def _live_threads(self) -> list[threading.Thread]:
        return list(self._threads)


class InlinePool(_PoolBase):
    """Runs each job synchronously inside ``enqueue``: deterministic, for tests."""

    name = "inline"

    def __init__(
        self,
        *,
        workers: int | None = None,
        queue_size: int = 4096,
        allowed: Callable[[int], bool] | None = None,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(allowed, executor)

    def enqueue(self, token: int, nr: int, args: tuple[int, ...]) -> bool:
        """Run the job now; its completion is ready when this returns."""
        if self._shut:
            raise RuntimeError("worker pool is shut down")
        self._accepted += 1
        self._run(token, nr, args)
        return True

    busy = property(lambda self: 0, doc="Always 0: nothing runs in the background.")
    total = property(lambda self: 0, doc="No threads.")
    max_workers = property(lambda self: 0, doc="No threads.")

    def shutdown(self, wait: bool = True) -> None:
        """Refuse further jobs."""
        self._shut = True
