"""Between the caller's event loop and a run in a thread: for ``amap`` and ``aimap`` under a
model that does not run on the caller's loop, and for auto's phases that do not.

:func:`in_thread` awaits a blocking call made in a thread of its own; :func:`blocks_in_thread`
iterates asynchronously over what a blocking generator yields there, a few blocks ahead of the
consumer. Cancelling the awaiting task (or leaving the loop) stops the run in the thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

# How long a cancelled ``amap`` waits for its run to wind down (threads get a second to return,
# processes are terminated) before it lets the cancellation through and leaves the rest to
# finish in the background.
CANCEL_WAIT: Final = 1.0
# Blocks of results a helper thread may hand over before the consumer takes them.
AHEAD: Final = 4


async def in_thread(work: Callable[[threading.Event], Any]) -> Any:
    """``await work(cancel)`` run in a thread; cancelling the await stops the run.

    The thread is a daemon of its own, not ``asyncio.to_thread``'s: a call that runs on in it
    (serial's item, which runs in that very thread) must hold up neither the cancellation,
    beyond :data:`CANCEL_WAIT` seconds, nor the exit of ``asyncio.run`` or of the program.
    """
    import asyncio
    import contextvars

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    cancel = threading.Event()
    context = contextvars.copy_context()

    def settle(outcome: tuple[bool, Any]) -> None:
        if future.done():
            return
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        outcome: tuple[bool, Any]
        try:
            outcome = (True, context.run(work, cancel))
        except BaseException as exc:
            outcome = (False, exc)
        # The caller's loop may be gone by now (the run was abandoned, the program ends).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    thread = threading.Thread(target=target, name="pickpool-amap", daemon=True)
    thread.start()
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait([future], timeout=CANCEL_WAIT)
        if not future.done():
            future.cancel()  # abandoned: what the run ends with later is not wanted
        elif not future.cancelled():
            future.exception()  # retrieved: the run's own Cancelled (or error) yields to ours
            thread.join()  # (it settled the future as its last act: gone when we return)
        raise
    except BaseException:
        if future.done():
            thread.join()  # (as below: it settled the future with the run's error, its last act)
        raise
    # The thread settled the future as its last act: it is ending now. Joined, it is gone when
    # amap returns, as a run's threads should be.
    thread.join()
    return result


async def blocks_in_thread(
    feed: Callable[[Callable[[list[T]], bool], threading.Event], None],
) -> AsyncGenerator[T, None]:
    """The values of the blocks ``feed(hand, cancel)`` hands over from a thread, at most
    :data:`AHEAD` blocks ahead of the consumer. Leaving the loop early stops the thread's run."""
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[T]] = asyncio.Queue()
    room = threading.Semaphore(AHEAD)

    def produce(cancel: threading.Event) -> None:
        def hand(values: list[T]) -> bool:
            # Wait for the consumer to take earlier blocks (the run stops if asked).
            while not room.acquire(timeout=0.05):
                if cancel.is_set():
                    return False
            loop.call_soon_threadsafe(queue.put_nowait, values)
            return True

        feed(hand, cancel)

    producer = asyncio.ensure_future(in_thread(produce))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                # The run ended: what it handed over went into the queue before it did.
                getter.cancel()
                while not queue.empty():
                    for value in queue.get_nowait():
                        yield value
                producer.result()  # raises what the run raised
                return
            room.release()
            for value in getter.result():
                yield value
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer


def bound_to_loop(fn: Callable[..., Any], loop: object) -> str | None:
    """What ``fn`` carries that belongs to ``loop`` (a client session, a lock, a queue made
    on it), named for a message; None if nothing it shows does.

    Only what can be seen is looked at: the arguments a ``functools.partial`` binds, a bound
    method's object, the values a closure holds, and one level of their attributes. Objects
    of asyncio and of the usual clients keep their loop in ``_loop`` (or ``loop``).
    """
    import functools

    seen: list[tuple[str, object]] = []
    while isinstance(fn, functools.partial):
        seen += [(f"argument {i + 1}", a) for i, a in enumerate(fn.args)]
        seen += [(f"argument {k}=", v) for k, v in fn.keywords.items()]
        fn = fn.func
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        seen.append(("the method's object", owner))
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            seen.append(("a value its closure holds", cell.cell_contents))
    for where, value in seen:
        if _on(value, loop):
            return f"{where} ({type(value).__name__})"
        for attribute in _attributes(value):
            if _on(attribute, loop):
                return f"{where} ({type(value).__name__}, through a {type(attribute).__name__})"
    return None


def _on(value: object, loop: object) -> bool:
    if value is loop:
        return True
    try:
        return any(getattr(value, name, None) is loop for name in ("_loop", "loop"))
    except Exception:  # (a property that raises is not a loop)
        return False


def _attributes(value: object) -> list[object]:
    try:
        found = vars(value)
    except TypeError:
        return []
    return [v for v in found.values() if not isinstance(v, str | int | float | bytes)][:64]


class FromAsync:
    """An async iterable's items as a plain iterator, for a run that reads its input in a
    thread of its own (``amap`` and ``aimap`` take ``async for`` sources).

    Each ``next()`` awaits the next item on ``loop`` (the caller's, which stays free while the
    run's thread waits), so it must never be called in the loop's own thread: the run reads
    such an input in a helper thread (``_cursor.Prefetched``) or runs in one.
    """

    # How long a read waits at a time, looking between waits at whether the loop still runs.
    _LOOK: Final = 0.1

    def __init__(self, items: Any, loop: Any) -> None:
        self._items = items.__aiter__()
        self._loop = loop
        self._thread = threading.get_ident()

    def __iter__(self) -> FromAsync:
        return self

    def __next__(self) -> Any:
        import asyncio
        import concurrent.futures

        if threading.get_ident() == self._thread:
            raise RuntimeError("an async iterable's items cannot be read in its loop's thread")
        future = asyncio.run_coroutine_threadsafe(_next(self._items), self._loop)
        while True:
            try:
                done, item = future.result(self._LOOK)
            except concurrent.futures.TimeoutError:
                if self._loop.is_closed() or not self._loop.is_running():
                    future.cancel()
                    raise StopIteration from None  # (the caller's loop is gone: so is the run)
                continue
            if not done:
                raise StopIteration
            return item


async def _next(items: Any) -> tuple[bool, Any]:
    """(True, the next item), or (False, None) at the end: StopAsyncIteration cannot cross a
    future."""
    try:
        return True, await items.__anext__()
    except StopAsyncIteration:
        return False, None


def sync_items(items: Any) -> tuple[Any, bool]:
    """``items``, and whether they came from an async iterable (then a :class:`FromAsync`,
    to be read off the loop's thread). Called in the caller's loop."""
    if hasattr(items, "__aiter__") and not hasattr(items, "__iter__"):
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "an async iterable of items is read on its event loop: call amap() or aimap() "
                "from a coroutine running on it"
            ) from None
        return FromAsync(items, loop), True
    return items, False
