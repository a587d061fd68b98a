"""``await amap(...)`` with ``model="asyncio"``: the driver on the caller's own event loop.

Coroutines must run on the loop that owns what they use (an aiohttp session, a database
pool), so here the items run as tasks of the caller's loop rather than on a loop of ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any, Literal, overload

from ._backends import Setup
from ._backends._asyncio import ItemRunner
from ._driver import Block, Done, Plan, Schedule
from ._task import Outcome, Task, run_initializer


@overload
def adrive(
    items: Iterable[Any],
    plan: Plan,
    setup: Setup,
    *,
    start: int = ...,
    blocks: Literal[False] = ...,
) -> AsyncGenerator[Done, None]: ...
@overload
def adrive(
    items: Iterable[Any], plan: Plan, setup: Setup, *, start: int = ..., blocks: bool
) -> AsyncGenerator[Done | Block, None]: ...
# (Complex on purpose: drive()'s loop on the caller's event loop, kept in step with it.)
async def adrive(  # noqa: C901, PLR0912
    items: Iterable[Any], plan: Plan, setup: Setup, *, start: int = 0, blocks: bool = False
) -> AsyncGenerator[Done | Block, None]:
    """Like :func:`pickpool._driver.drive`, on the running loop."""
    error = run_initializer(setup.initializer, setup.initargs)
    if error is not None:
        raise error
    schedule = Schedule(items, plan, start=start, blocks=blocks)
    outbox: asyncio.Queue[list[Outcome]] = asyncio.Queue()
    runner = ItemRunner(setup, outbox.put_nowait)
    waiting: list[asyncio.TimerHandle] = []  # retries waiting out their backoff
    pacer = plan.pacer
    held: list[Task] = []  # under a rate: retries due, waiting for their start

    def hold(task: Task) -> None:
        held.append(task)
        outbox.put_nowait([])  # (the loop below may be waiting for outcomes)

    begin = runner.start if pacer is None else hold

    def due(task: Task) -> None:
        """A retry that waited out its backoff: sent, unless the run failed before it since."""
        if schedule.may_start(task):
            begin(task)

    finished = False
    try:
        while True:
            if pacer is None:
                for task in schedule.tasks():
                    runner.start(task)
            else:
                while held or schedule.has_room():
                    if (delay := pacer.delay()) > 0:
                        await asyncio.sleep(delay)
                    tasks = [held.pop(0)] if held else schedule.tasks(most=1)
                    if not tasks:
                        break
                    pacer.reserve()  # (now: its delay has passed)
                    runner.start(tasks[0])
            if schedule.finished:
                finished = not schedule.over
                break
            outcomes = await outbox.get()
            while not outbox.empty():
                outcomes += outbox.get_nowait()
            retries, dones = schedule.accept(outcomes)
            for task, delay in retries:
                if delay > 0:
                    # Back off on the loop, the item still outstanding: the run waits for it.
                    waiting.append(asyncio.get_running_loop().call_later(delay, due, task))
                else:
                    begin(task)
            for done in dones:
                yield done
    finally:
        for handle in waiting:
            handle.cancel()
        await runner.cancel()
        await runner.ashutdown_executor(cancel=not finished)
    if not schedule.over:  # (a run that ended at a failure raises that failure)
        schedule.check_source()
