"""LazyPool: one thread at first, more while every thread is busy, fewer after idling.

A job that finds no idle thread starts a new one (up to ``max_workers``),
so blocking calls never queue behind each other while there is room to
grow; a thread idle for ``idle_timeout`` seconds exits, down to
``min_workers``. ``enqueue`` never blocks: starting a thread is the most
it does, and a full queue returns ``False``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ksvc_basic.worker_pools import Executor, QueuedPool, default_workers


class LazyPool(QueuedPool):
    """A worker pool that scales with demand."""

    name = "lazy"

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        min_workers: int = 1,
        idle_timeout: float = 2.0,
        queue_size: int = 4096,
        allowed: Callable[[int], bool] | None = None,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(allowed, executor, queue_size)
        self._max = max_workers if max_workers is not None else max(4, default_workers() * 4)
        if not 1 <= min_workers <= self._max:
            raise ValueError(f"need 1 <= min_workers ({min_workers}) <= max_workers ({self._max})")
        self._min = min_workers
        self.idle_timeout = idle_timeout
        self._idle = 0
        self._threads: set[threading.Thread] = set()
        self._serial = 0
        self.peak_workers = 0
        with self._cv:
            for _ in range(min_workers):
                self._spawn()

    def _spawn(self) -> None:
        # Called with the lock held.
        self._serial += 1
        t = threading.Thread(target=self._work, name=f"ksvc-lazy-{self._serial}", daemon=True)
        self._threads.add(t)
        self.peak_workers = max(self.peak_workers, len(self._threads))
        t.start()

    def _wake_worker(self) -> None:
        """Start a thread when none is idle for the queued job, else wake one (lock held)."""
        if self._idle < len(self._queue) and len(self._threads) < self._max:
            self._spawn()
        else:
            self._cv.notify()

    def _work(self) -> None:
        me = threading.current_thread()
        cv, queue = self._cv, self._queue
        while True:
            with cv:
                while not queue and not self._shut:
                    self._idle += 1
                    woke = cv.wait(self.idle_timeout)
                    self._idle -= 1
                    if not woke and not queue and len(self._threads) > self._min:
                        self._threads.discard(me)  # idled long enough: shrink
                        return
                if not queue:
                    self._threads.discard(me)
                    return
                token, nr, args = queue.popleft()
                self._busy += 1
            self._run_counted(cv, token, nr, args)

    @property
    def total(self) -> int:
        """Threads alive."""
        return len(self._threads)

    @property
    def max_workers(self) -> int:
        """The most threads this pool will run."""
        return self._max

    def _live_threads(self) -> list[threading.Thread]:
        return list(self._threads)
