"""Per-worker state that means the same on every model: ``worker_state=True``.

A plain ``initializer`` sets up each worker by side effect, usually a global: one per worker
process, but one for all the threads of a thread pool, where a connection made in one thread
is then used from the others. With ``worker_state=True`` the initializer's return value is
the state, and each worker gets its own: :class:`PerWorker` calls the initializer the first
time a worker (a process, a thread, an event loop's thread) calls the function, keeps what it
returned for that worker, and calls ``fn(state, item)``. The wrapper pickles as its parts, so
a worker process rebuilds it with no state and makes its own.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from ._task import initializer_name, is_async_callable


class _Made:
    """One worker's state, or what its initializer raised (raised again for each item)."""

    __slots__ = ("error", "state")

    def __init__(self, state: object, error: BaseException | None) -> None:
        self.state, self.error = state, error


class PerWorker:
    """``fn`` called as ``fn(state, item)`` (or ``fn(state, *args)``), ``state`` made once per
    worker by ``initializer``."""

    __slots__ = ("_local", "fn", "initargs", "initializer")

    def __init__(
        self, fn: Callable[..., Any], initializer: Callable[..., Any], initargs: tuple[Any, ...]
    ) -> None:
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.fn, self.initializer, self.initargs))

    def __repr__(self) -> str:
        return f"{self.fn!r} with worker_state={initializer_name(self.initializer)}"

    def _pickpool_release_state(self) -> Any:
        """Close this thread's worker's state, if it made one that has a ``close()``; called in
        the worker, by the backend, as it is done with the run. Returns what ``close()``
        returned (a coroutine, for an async client's, which the backend awaits on the loop
        the state was made on). A ``close()`` that raises is not the run's failure."""
        made = self._made()
        if made is None:
            return None
        del self._local.made
        close = getattr(made.state, "close", None)
        if close is None:
            return None
        try:
            return close()
        except Exception:
            return None

    def _made(self) -> _Made | None:
        made: _Made | None = getattr(self._local, "made", None)
        return made

    def _keep(self, state: object, error: BaseException | None) -> _Made:
        if error is not None:
            error.add_note(
                f"pickpool: raised by initializer={initializer_name(self.initializer)} as it "
                "made a worker's state; the items given to that worker fail with it"
            )
        made = self._local.made = _Made(state, error)
        return made

    def __call__(self, *args: Any) -> Any:
        made = self._made()
        if made is None:
            try:
                made = self._keep(self.initializer(*self.initargs), None)
            except Exception as exc:
                made = self._keep(None, exc)
        if made.error is not None:
            raise made.error
        return self.fn(made.state, *args)


class AsyncPerWorker(PerWorker):
    """:class:`PerWorker` for an ``async def`` function; the initializer may be one too."""

    __slots__ = ()

    async def __call__(self, *args: Any) -> Any:
        made = self._made()
        if made is None:
            try:
                state = self.initializer(*self.initargs)
                if inspect.isawaitable(state):
                    state = await state
                made = self._keep(state, None)
            except Exception as exc:
                made = self._keep(None, exc)
        if made.error is not None:
            raise made.error
        return await self.fn(made.state, *args)


def per_worker(
    fn: Callable[..., Any], initializer: Callable[..., Any], initargs: tuple[Any, ...]
) -> PerWorker:
    """``fn`` wrapped to take its worker's state first (see the module's docstring)."""
    if is_async_callable(fn):
        return AsyncPerWorker(fn, initializer, initargs)
    return PerWorker(fn, initializer, initargs)
