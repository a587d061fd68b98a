"""``await amap(...)`` on a model that runs on an event loop: the loop on the caller's own.

Coroutines must run on the loop that owns what they use (an aiohttp session, a database
pool), so here the items run as tasks of the caller's loop, through the model's runner
(``Model.loop_runner``), rather than on a loop of ours. The run follows the same
:class:`~pickpool._step.Step` as ``_driver.drive``, awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any, Literal, overload

from ._backends import Setup, model
from ._cursor import Source
from ._plan import Plan
from ._results import Leg
from ._schedule import Block, Done
from ._step import Step
from ._task import Outcome, run_initializer


@overload
def adrive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    *,
    start: int = ...,
    blocks: Literal[False] = ...,
    leg: Leg | None = ...,
) -> AsyncGenerator[Done, None]: ...
@overload
def adrive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    *,
    start: int = ...,
    blocks: bool,
    leg: Leg | None = ...,
) -> AsyncGenerator[Done | Block, None]: ...
async def adrive(
    items: Iterable[Any] | Source,
    plan: Plan,
    setup: Setup,
    *,
    start: int = 0,
    blocks: bool = False,
    leg: Leg | None = None,
) -> AsyncGenerator[Done | Block, None]:
    """Like :func:`pickpool._driver.drive`, on the running loop."""
    began = time.perf_counter()
    make_runner = model(plan.model).loop_runner
    if make_runner is None:
        raise TypeError(f"model={plan.model!r} does not run on an event loop")
    # The caller's loop is the one worker: its initializer runs here, and what it raises is
    # raised, as serial's does.
    error = run_initializer(setup.initializer, setup.initargs)
    if error is not None:
        raise error
    step = Step(items, plan, start=start, blocks=blocks)
    outbox: asyncio.Queue[list[Outcome]] = asyncio.Queue()
    runner = make_runner(setup, outbox.put_nowait)
    source = step.schedule.source
    if source.live:
        # An item read in the input's thread wakes the loop that waits for outcomes.
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(outbox.put_nowait, [])

        source.attach(wake)
    try:
        while True:
            for task in step.starts():
                runner.start(task)
            if step.finished:
                break
            outcomes = await _outcomes(outbox, step.wait())
            for done in step.accept(outcomes):
                if leg is not None:
                    if not leg.items:
                        leg.first = time.perf_counter() - began
                    leg.items += len(done.values) if type(done) is Block else 1
                yield done
    finally:
        source.attach(None)
        await runner.cancel()
        await runner.ashutdown_executor(cancel=not step.finished or step.over)
        await runner.release()
        if leg is not None:
            leg.seconds += time.perf_counter() - began
            leg.workers = max(leg.workers, runner.peak, 1)
    step.end()


async def _outcomes(outbox: asyncio.Queue[list[Outcome]], wait: float | None) -> list[Outcome]:
    """What the runner reported, at least one batch unless ``wait`` seconds pass first."""
    if wait is None:
        outcomes = await outbox.get()
    else:
        try:
            async with asyncio.timeout(wait):
                outcomes = await outbox.get()
        except TimeoutError:
            return []
    while not outbox.empty():
        outcomes += outbox.get_nowait()
    return outcomes
