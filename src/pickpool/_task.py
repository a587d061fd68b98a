"""What every worker does with a chunk of items, whichever model it runs under.

A *task* is a chunk: ``(task_id, [(index, item), ...])``. Running it gives one *outcome* per
item, ``(index, status, payload, traceback_text)``: ``status`` is :data:`OK` (payload is the
result), :data:`ERROR` (payload is the exception your function raised) or :data:`FATAL` (a
``BaseException`` such as ``SystemExit`` that the serial loop would not have survived either).
Plain tuples, because they cross process boundaries by the hundred thousand.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncio

OK: Final = 0
ERROR: Final = 1
FATAL: Final = 2

Item = tuple[int, Any]
Task = tuple[int, Sequence[Item]]
Outcome = tuple[int, int, Any, str | None]


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, partials of them, and objects with async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the async-ness of __call__ itself
    return call is not None and inspect.iscoroutinefunction(call)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def failed(index: int, exc: BaseException) -> Outcome:
    """The outcome of an item whose call raised ``exc``."""
    status = ERROR if isinstance(exc, Exception) else FATAL
    return (index, status, exc, format_traceback(exc))


class Caller:
    """Calls ``fn`` on items in the current thread, owning an event loop if ``fn`` is async.

    One per worker thread or process: the loop is created on the first coroutine and reused, so
    an async function costs one loop per worker, not one per item.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self._runner: asyncio.Runner | None = None

    def call(self, index: int, item: Any) -> Outcome:
        try:
            result = self.fn(item)
            if _awaitable(result):
                result = self._await(result)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return failed(index, exc)
        return (index, OK, result, None)

    def run(self, task: Task) -> list[Outcome]:
        return [self.call(index, item) for index, item in task[1]]

    def _await(self, awaitable: Any) -> Any:
        if self._runner is None:
            import asyncio

            self._runner = asyncio.Runner()
        return self._runner.run(_as_coroutine(awaitable))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def _awaitable(obj: object) -> bool:
    """``inspect.isawaitable``, at a fifth of the cost for the plain results most calls return."""
    if hasattr(type(obj), "__await__"):
        return True
    return inspect.isgenerator(obj) and bool(obj.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
