"""The futures of loop-lane entries (``Waiter``: lane.c's waiter.h and its twin, waiter_reference.py).

A waiter resolved inside a lane's turn wakes its task at the end of that turn,
in the task's context; resolved anywhere else it behaves as an asyncio Future
(its callbacks go through ``call_soon``). Every test runs against both
implementations (``lane_impl``), on real lanes reading real files and pipes.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ksvc_host.abi.syscalls import SYSCALLS as NR

pytestmark = pytest.mark.timeout(30)

SPIN_S = 5.0
"""How long a test turns a lane waiting for a completion before it fails."""


@pytest.fixture
def mod(lane_impl: str) -> Any:
    from ksvc_basic import own_rings

    return own_rings.lane_module()


@pytest.fixture
def lane(mod: Any) -> Iterator[Any]:
    from ksvc_basic import own_rings, translation

    lane = mod.Lane(64, int(own_rings.SETUP_FLAGS), 1.0, 64)
    table = translation.table(frozenset(range(64)))
    for nr in (NR["pread64"], NR["read"]):
        opcode, kind = table[nr]
        lane.route(nr, opcode, kind)
    yield lane
    lane.cancel_all()
    end = time.monotonic() + SPIN_S
    while lane.inflight and time.monotonic() < end:
        lane.turn()
        time.sleep(0.001)
    assert lane.close(), "the lane still held an entry at the end of the test"


@pytest.fixture
def data(tmp_path: Any) -> Iterator[tuple[int, bytes]]:
    payload = os.urandom(8192)
    path = tmp_path / "data"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    yield fd, payload
    os.close(fd)


def _turn_until(lane: Any, done: Callable[[], bool]) -> None:
    """Turn the lane (without yielding to the loop) until *done*; fail after SPIN_S."""
    end = time.monotonic() + SPIN_S
    while not done():
        assert time.monotonic() < end, "the lane never delivered the completion"
        lane.turn()


async def _in_callback(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> Any:
    """Run *fn* in a loop callback, where the front end runs its turns (no task is running there)."""
    out = loop.create_future()

    def run() -> None:
        try:
            out.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting test
            out.set_exception(exc)

    loop.call_soon(run)
    return await out


def _run(body: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(asyncio.get_running_loop()), 20)

    asyncio.run(main())


def test_a_turn_wakes_the_tasks_it_resolved_before_it_returns_in_completion_order(
    mod: Any, lane: Any, data: tuple[int, bytes]
) -> None:
    fd, payload = data

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        woke: list[tuple[int, bytes]] = []

        async def reader(i: int) -> None:
            w = mod.Waiter(loop)
            assert lane.start_read(w, NR["pread64"], fd, 100, i * 100) is not None
            woke.append((i, await w))

        tasks = [loop.create_task(reader(i)) for i in range(8)]
        await asyncio.sleep(0)  # each task started its entry and waits on its waiter
        assert not woke
        # In one callback, without yielding to the loop: only the turns can have run the tasks.
        await _in_callback(loop, lambda: _turn_until(lane, lambda: len(woke) == 8))
        assert sorted(woke) == [(i, payload[i * 100 : i * 100 + 100]) for i in range(8)]
        await asyncio.gather(*tasks)

    _run(body)


def test_a_woken_task_runs_in_its_own_context(mod: Any, lane: Any, data: tuple[int, bytes]) -> None:
    fd, payload = data
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        seen: list[str] = []

        async def reader(name: str) -> None:
            var.set(name)
            w = mod.Waiter(loop)
            assert lane.start_read(w, NR["pread64"], fd, 10, 0) is not None
            assert await w == payload[:10]
            seen.append(var.get())

        tasks = [loop.create_task(reader(n)) for n in ("a", "b")]
        await asyncio.sleep(0)
        await _in_callback(loop, lambda: _turn_until(lane, lambda: len(seen) == 2))
        assert sorted(seen) == ["a", "b"], "a task woken by the turn did not see its own context"
        assert var.get() == "outside", "a woken task's context leaked into the turn's caller"
        await asyncio.gather(*tasks)

    _run(body)


def _three_reads(mod: Any, lane: Any, loop: asyncio.AbstractEventLoop, fd: int,
                 first: Callable[[Any], Any]) -> list[int]:  # fmt: skip
    """Three lane reads on waiters whose callbacks record their index, *first* before them on the first;
    the list the callbacks append to."""
    ran: list[int] = []
    waiters = [mod.Waiter(loop) for _ in range(3)]
    waiters[0].add_done_callback(first)
    for i, w in enumerate(waiters):
        w.add_done_callback(lambda _, i=i: ran.append(i))
        assert lane.start_read(w, NR["pread64"], fd, 10, 0) is not None
    return ran


def test_a_failing_callback_is_reported_and_the_rest_of_the_batch_still_wakes(
    mod: Any, lane: Any, data: tuple[int, bytes]
) -> None:
    fd, _ = data

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        def bad(_: Any) -> None:
            raise ValueError("from a callback")

        ran = _three_reads(mod, lane, loop, fd, first=bad)
        await _in_callback(loop, lambda: _turn_until(lane, lambda: len(ran) == 3))
        assert ran == [0, 1, 2]
        assert [type(c.get("exception")) for c in reported] == [ValueError]

    _run(body)


def test_a_base_exception_from_a_woken_task_leaves_the_rest_scheduled(
    mod: Any, lane: Any, data: tuple[int, bytes]
) -> None:
    fd, _ = data

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        def interrupt(_: Any) -> None:
            raise KeyboardInterrupt

        ran = _three_reads(mod, lane, loop, fd, first=interrupt)
        at_interrupt: list[int] = []

        def turns() -> None:
            end = time.monotonic() + SPIN_S
            try:
                while time.monotonic() < end:
                    lane.turn()
            except KeyboardInterrupt:
                at_interrupt.extend(ran)
                raise

        with pytest.raises(KeyboardInterrupt):
            await _in_callback(loop, turns)
        assert at_interrupt == [], "callbacks after the interrupted one ran inside the interrupted turn"
        await asyncio.sleep(0)  # the rest went through call_soon: nothing is left asleep
        assert ran == [0, 1, 2]

    _run(body)


def test_a_turn_run_inside_a_task_leaves_the_wake_ups_to_the_loop(mod: Any, lane: Any, data: tuple[int, bytes]) -> None:
    """asyncio lets no task step while another runs: a turn called from a coroutine (as a closing front end
    does) wakes nobody itself, and every task it resolved still wakes, through the loop."""
    fd, payload = data

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        woke: list[bytes] = []

        async def reader() -> None:
            w = mod.Waiter(loop)
            assert lane.start_read(w, NR["pread64"], fd, 10, 0) is not None
            woke.append(await w)

        tasks = [loop.create_task(reader()) for _ in range(4)]
        await asyncio.sleep(0)
        end = time.monotonic() + SPIN_S
        while lane.inflight:  # this coroutine turns the lane, as LoopLane.aclose does
            assert time.monotonic() < end, "the lane never delivered the completions"
            lane.turn()
        assert woke == [], "a task stepped inside another task's step"
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert woke == [payload[:10]] * 4

    _run(body)


def test_outside_a_turn_a_waiter_behaves_as_an_asyncio_future(mod: Any) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        for make in (loop.create_future, lambda: mod.Waiter(loop)):
            f = make()
            assert f.get_loop() is loop and not f.done() and not f.cancelled()
            with pytest.raises(asyncio.InvalidStateError):
                f.result()
            with pytest.raises(asyncio.InvalidStateError):
                f.exception()
            calls: list[Any] = []
            f.add_done_callback(calls.append)
            f.add_done_callback(calls.append)
            assert f.remove_done_callback(calls.append) == 2
            f.add_done_callback(calls.append)
            loop.call_soon(f.set_result, 7)
            assert await f == 7 and f.result() == 7 and f.exception() is None
            assert calls == [f]
            with pytest.raises(asyncio.InvalidStateError):
                f.set_result(8)
            assert not f.cancel()
            late: list[Any] = []
            f.add_done_callback(late.append)  # done already: scheduled, as a Future does
            assert late == []
            await asyncio.sleep(0)
            assert late == [f]

            g = make()
            g.set_exception(OSError(5, "eio"))
            with pytest.raises(OSError):
                await g
            assert isinstance(g.exception(), OSError)
            with pytest.raises(TypeError):
                make().set_exception(StopIteration())

            h = make()
            assert h.cancel("why") and h.cancelled() and h.done()
            with pytest.raises(asyncio.CancelledError, match="why"):
                h.result()

            async def awaits(x: Any) -> Any:
                return await x

            t = loop.create_task(awaits(make()))
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t

    _run(body)


async def _turning(lane: Any, done: Callable[[], bool]) -> None:
    """Turn the lane, yielding to the loop between turns, until *done*; fail after SPIN_S."""
    end = time.monotonic() + SPIN_S
    while not done():
        assert time.monotonic() < end, "the lane never delivered the completion"
        lane.turn()
        await asyncio.sleep(0.001)


def _pipe_lane(mod: Any, settle_s: float) -> Any:
    from ksvc_basic import own_rings, translation

    lane = mod.Lane(64, int(own_rings.SETUP_FLAGS), settle_s, 64)
    opcode, kind = translation.table(frozenset(range(64)))[NR["read"]]
    lane.route(NR["read"], opcode, kind)
    return lane


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


async def _task_reading(mod: Any, lane: Any, fd: int) -> tuple[Any, asyncio.Task[Any]]:
    """A task awaiting a lane read of *fd* that is in the kernel: (its waiter, the task)."""
    fut = mod.Waiter(asyncio.get_running_loop())
    assert lane.start_read(fut, NR["read"], fd, 10, 0) is not None

    async def awaits() -> Any:
        return await fut

    t = asyncio.create_task(awaits())
    lane.turn(False)
    await asyncio.sleep(0.01)
    return fut, t


def test_a_task_cancelled_while_its_lane_read_waits_ends_once_the_kernel_cancelled_it(
    mod: Any, lane: Any, pipe: tuple[int, int]
) -> None:
    """The waiter settles its own cancellation: the task's CancelledError comes once the kernel answered the
    cancel (the entry is gone), not before, and a later read gets every byte written after."""
    r, w = pipe

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        fut, t = await _task_reading(mod, lane, r)
        t.cancel()
        await asyncio.sleep(0.01)
        assert not t.done() and not fut.done(), "cancelled before the kernel answered the cancel"
        await _turning(lane, t.done)
        with pytest.raises(asyncio.CancelledError):
            await t
        assert fut.cancelled()
        assert lane.inflight == 0, "the cancelled entry still holds its slot"
        os.write(w, b"later")
        assert os.read(r, 10) == b"later"

    _run(body)


def test_a_read_racing_its_cancellation_loses_nothing(mod: Any, lane: Any, pipe: tuple[int, int]) -> None:
    """Bytes arrive as the task is cancelled: either the read got them first and the task gets them instead of
    CancelledError (and is not left cancelling), or the kernel cancelled the read and they are still in the
    pipe (with deferred task work the kernel may see the cancel first)."""
    r, w = pipe

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        fut, t = await _task_reading(mod, lane, r)
        os.write(w, b"raced")  # the kernel completes the read; nobody has reaped it yet
        time.sleep(0.01)
        t.cancel()
        await _turning(lane, t.done)
        if t.cancelled():
            assert fut.cancelled()
            assert os.read(r, 10) == b"raced", "a cancelled read took the bytes"
        else:
            assert t.result() == b"raced"
            assert t.cancelling() == 0, "the task was left with a cancellation it never got"

    _run(body)


def test_a_cancellation_thrown_into_a_task_whose_read_is_done_takes_the_bytes(
    mod: Any, lane: Any, pipe: tuple[int, int]
) -> None:
    """Cancelled between its read's completion and its wake-up (the waiter cannot refuse: it is done), the
    task gets the bytes; a failed read's task gets the CancelledError."""
    r, w = pipe

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        for payload, fd in ((b"done", r), (None, 1 << 20)):
            fut = mod.Waiter(loop)
            assert lane.start_read(fut, NR["read"], fd, 10, 0) is not None

            async def awaits(f: Any = fut) -> Any:
                return await f

            t = loop.create_task(awaits())
            await asyncio.sleep(0)
            if payload:
                os.write(w, payload)
            # A turn run inside a task wakes nobody itself: t's wake-up waits in the loop while t is cancelled.
            _turn_until(lane, fut.done)
            assert not t.done()
            assert t.cancel()
            if payload:
                assert await t == payload
                assert t.cancelling() == 0
            else:
                with pytest.raises(asyncio.CancelledError):
                    await t

    _run(body)


def test_a_cancellation_the_kernel_never_answers_ends_after_the_settle_time(mod: Any, pipe: tuple[int, int]) -> None:
    """Nothing reaps the lane: the task is cancelled after the lane's settle time all the same, and the answer
    that comes later frees the entry's slot."""
    lane = _pipe_lane(mod, 0.1)
    r, w = pipe

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        fut, t = await _task_reading(mod, lane, r)
        start = time.monotonic()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(t, 5)
        assert time.monotonic() - start >= 0.09
        assert fut.cancelled()
        await _turning(lane, lambda: lane.inflight == 0)

    try:
        _run(body)
    finally:
        assert lane.close()


def test_a_lane_entry_s_waiter_is_a_coroutine_a_task_can_run(mod: Any, lane: Any, data: tuple[int, bytes]) -> None:
    """A front end returns the waiter as the operation: create_task, gather and wait_for take it."""
    fd, payload = data

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        assert asyncio.iscoroutine(mod.Waiter(loop))
        futs = [mod.Waiter(loop) for _ in range(3)]
        for i, f in enumerate(futs):
            assert lane.start_read(f, NR["pread64"], fd, 10, i * 10) is not None
        t = asyncio.create_task(futs[0])
        turner = asyncio.create_task(_turning(lane, lambda: all(f.done() for f in futs)))
        got = await asyncio.gather(t, futs[1], asyncio.wait_for(futs[2], 5))
        await turner
        assert got == [payload[0:10], payload[10:20], payload[20:30]]

    _run(body)


def test_gather_of_lane_waiters_cancelled_raises_cancelled_error_and_eats_nothing(
    mod: Any, pipe: tuple[int, int]
) -> None:
    """asyncio.gather cancels its children and reads a cancelled child's error (_make_cancelled_error)."""
    lane = _pipe_lane(mod, 1.0)
    r, w = pipe

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        futs = [mod.Waiter(loop) for _ in range(2)]
        for f in futs:
            assert lane.start_read(f, NR["read"], r, 10, 0) is not None
        lane.turn(False)
        g = asyncio.gather(*futs)
        turner = asyncio.create_task(_turning(lane, lambda: all(f.done() for f in futs)))
        await asyncio.sleep(0.01)
        assert g.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await g
        await turner
        assert all(f.cancelled() for f in futs)
        assert all(f._make_cancelled_error().args == ("stop",) for f in futs)
        os.write(w, b"later")
        assert os.read(r, 10) == b"later"

    try:
        _run(body)
    finally:
        assert lane.close()
