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


def test_a_task_cancelled_while_its_lane_read_waits_reads_nothing_later_ones_miss(mod: Any, lane: Any) -> None:
    r, w = os.pipe()

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        fut = mod.Waiter(loop)
        token = lane.start_read(fut, NR["read"], r, 10, 0)
        assert token is not None

        async def awaits() -> Any:
            return await fut

        t = loop.create_task(awaits())
        lane.turn(False)
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert fut.cancelled()
        answer = loop.create_future()
        assert lane.abandon(token, answer)
        _turn_until(lane, answer.done)
        assert answer.result()[0] < 0, "the kernel did not cancel the read"
        os.write(w, b"later")
        assert os.read(r, 10) == b"later"

    try:
        _run(body)
    finally:
        os.close(r)
        os.close(w)
