"""amap: for callers already inside an event loop."""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pickpool
from pickpool._api import Model
from tests.helpers import Boom, asquare_or_fail, identity, square_or_fail


def test_amap_matches_map(model: Model) -> None:
    items = [(i, i == 5) for i in range(12)]

    async def main() -> list[int | pickpool.Failure]:
        return await pickpool.amap(square_or_fail, items, model=model, on_error="collect")

    got = asyncio.run(main())
    expected = pickpool.map(square_or_fail, items, model=model, on_error="collect")
    assert [type(x) for x in got] == [type(x) for x in expected]
    assert [x for x in got if not isinstance(x, pickpool.Failure)] == [
        x for x in expected if not isinstance(x, pickpool.Failure)
    ]


def test_amap_raises_the_original_exception() -> None:
    async def main() -> None:
        await pickpool.amap(asquare_or_fail, [(1, False), (2, True)], model="asyncio")

    with pytest.raises(Boom):
        asyncio.run(main())


def test_asyncio_items_run_on_the_callers_loop() -> None:
    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()  # bound to this loop on first use

        async def uses_callers_loop(x: int) -> bool:
            if x == 0:
                event.set()
            await event.wait()
            return asyncio.get_running_loop() is loop

        return await pickpool.amap(uses_callers_loop, range(5), model="asyncio")

    assert asyncio.run(main()) == [True] * 5


def test_other_models_keep_the_loop_free() -> None:
    import time

    def blocking(x: int) -> int:
        time.sleep(0.05)
        return x

    async def main() -> tuple[list[int], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        results = await pickpool.amap(blocking, range(8), model="threads", workers=2)
        task.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert results == list(range(8))
    assert ticks > 0  # the loop ran while the threads worked


@pytest.mark.parametrize("model", ["threads", "processes", "asyncio"])
def test_cancelling_amap_stops_the_run(model: Model) -> None:
    import socket
    import time

    async def main() -> None:
        # The run is cancelled once its first item runs: item 0 says so by connecting to this
        # server, from whichever thread or worker process runs it.
        under_way = asyncio.Event()

        def told(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            under_way.set()
            writer.close()

        server = await asyncio.start_server(told, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def slow(x: int) -> int:
            if x == 0:
                socket.create_connection(("127.0.0.1", port)).close()
            time.sleep(0.2)  # the workload: a call that waits
            return x

        async with server:
            task = asyncio.create_task(pickpool.amap(slow, range(1000), model=model, workers=2))
            await asyncio.wait_for(under_way.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())  # no_leaks checks that every worker is gone


def test_amap_with_a_plain_function_under_asyncio() -> None:
    async def main() -> list[object]:
        return await pickpool.amap(identity, range(10), model="asyncio")

    assert asyncio.run(main()) == list(range(10))


async def numbers(n: int) -> AsyncIterator[int]:
    """An async source of items, as a database cursor or a stream is."""
    for i in range(n):
        await asyncio.sleep(0)
        yield i


async def adouble(x: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["auto", "serial", "threads", "processes", "asyncio"])
@pytest.mark.parametrize("fn", [adouble, functools.partial(operator.mul, 2)])
def test_amap_and_aimap_take_an_async_iterable(model: Model, fn: Callable[[int], Any]) -> None:
    async def main() -> None:
        assert await pickpool.amap(fn, numbers(50), model=model) == [2 * i for i in range(50)]
        got = [r async for r in pickpool.aimap(fn, numbers(30), model=model)]
        assert got == [2 * i for i in range(30)]

    asyncio.run(main())


def test_an_async_iterable_needs_its_loop() -> None:
    with pytest.raises(RuntimeError, match="from a coroutine running on it"):
        pickpool.aimap(abs, numbers(3))
