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
from ._task import Outcome, run_initializer


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
async def adrive(
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
    finished = False
    try:
        while True:
            for task in schedule.tasks():
                runner.start(task)
            if schedule.finished:
                finished = True
                break
            outcomes = await outbox.get()
            while not outbox.empty():
                outcomes += outbox.get_nowait()
            retries, dones = schedule.accept(outcomes)
            for task, delay in retries:
                if delay > 0:
                    # Back off on the loop, the item still outstanding: the run waits for it.
                    waiting.append(asyncio.get_running_loop().call_later(delay, runner.start, task))
                else:
                    runner.start(task)
            for done in dones:
                yield done
    finally:
        for handle in waiting:
            handle.cancel()
        await runner.cancel()
        await runner.ashutdown_executor(cancel=not finished)
    schedule.check_source()
