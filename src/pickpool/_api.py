"""The public functions ``map``, ``imap``, ``amap``, ``starmap`` and ``aimap``.

Each checks its options where the call enters (``_options.check``, once) and starts a
:class:`~pickpool._run.Run`; what differs between them is only how the results are handed
over: a list, a lazy iterator, awaited, or iterated asynchronously. Their signatures are typed
(overloads) so that a type checker gives the results' type.
"""

from __future__ import annotations

import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from typing import Any, Literal, TypeVar, Unpack, overload

from . import _backends
from ._bridge import blocks_in_thread, bound_to_loop, in_thread, sync_items
from ._failure import Failure
from ._native import InnerThreads
from ._options import (
    DEFAULT_BACKOFF,
    AsyncKeywords,
    Keywords,
    Model,
    NotAModel,
    OnError,
    Options,
    Progress,
    Require,
    check,
    check_fn,
    from_keywords,
)
from ._results import AsyncResults, Report, Results
from ._run import Run
from ._task import is_async_callable

__all__ = ["Model", "OnError", "aimap", "amap", "imap", "map", "starmap"]

T = TypeVar("T")
R = TypeVar("R")


# Signatures: an async function's results are what its coroutines return; "collect" puts a
# Failure where an item failed.
@overload
def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[Any]: ...
@overload
def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[Any], Report]: ...
@overload
def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[Any]: ...
@overload
def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[Any], Report]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[AsyncKeywords],
) -> list[R]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[AsyncKeywords],
) -> list[R | Failure]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[True],
    **options: Unpack[AsyncKeywords],
) -> tuple[list[R], Report]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[True],
    **options: Unpack[AsyncKeywords],
) -> tuple[list[R | Failure], Report]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[R]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[R | Failure]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[R], Report]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[R | Failure], Report]: ...
def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    model: Model | Sequence[NotAModel] = "auto",  # (Keywords says why)
    workers: int | None = None,
    max_concurrency: int | None = None,
    max_rate: float | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    on_error: OnError = "raise",
    progress: Progress = False,
    client: Any = None,
    fresh_workers: bool = False,
    inner_threads: InnerThreads = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    worker_state: bool = False,
    max_tasks_per_child: int | None = None,
    require: Require = None,
    report: bool = False,
) -> list[Any] | tuple[list[Any], Report]:
    """Call ``fn`` on every item, concurrently, and return the results as a list.

    ``pickpool.map(f, xs)`` returns what ``[f(x) for x in xs]`` returns, whichever model runs
    it; an ``async def`` function's coroutines are awaited (``[await f(x) for x in xs]``).
    Under auto (the default) the calls may run in other processes, where what ``f`` writes
    to a global or to an object it was given stays in that process: pass
    ``require="sharedmem"`` if the caller must see it. Per-worker state is best made with
    ``initializer=`` and ``worker_state=True``, which means the same on every model.

    Args:
        fn: a function of one argument, plain or ``async def``. For several arguments per
            item, wrap it: ``pickpool.star(fn)``.
        items: any iterable; read lazily, a window at a time.
        *more_items: more iterables, as the builtin ``map`` takes them: ``fn`` gets one item
            of each (``map(pow, bases, exponents)`` calls ``pow(b, e)``), and the run ends
            with the shortest.
        model: ``'serial'`` (a plain loop), ``'threads'`` (blocking I/O, C code that releases
            the GIL), ``'processes'`` (pure-Python CPU work), ``'asyncio'`` (many slow waits),
            ``'interpreters'`` (Python 3.14+: one GIL per sub-interpreter), ``'dask'`` (a
            dask.distributed cluster: the ``client`` given or the active one; extra ``dask``),
            or ``'auto'`` (the default): measure ``fn`` on the first items, as
            :func:`pickpool.advise` does, and run the rest on the fastest model, sized. Those
            first items' results are kept: every item is computed once.
        workers: how many at once (``'serial'`` always runs one). Defaults: processes, the
            usable cores; threads, 8 per core (at most 64); asyncio, 1024 coroutines; auto,
            what its cost model finds fastest (given, auto keeps it).
        chunksize: items per hand-off to a worker, fixed. Not given, chunks adapt to the
            measured pace: each aims at ~5 ms of a worker's time (serial: ~2 ms), shrinking
            near the end of the input; the first is 1, or for processes about 4 chunks per
            worker over the input (at most 256 items; 32 for an input of unknown length).
        ordered: ``True``: results in input order. ``False``: as they complete.
        timeout: seconds each item may run; an item past it fails with
            :class:`pickpool.TaskTimeout` (its process killed under ``'processes'``; a thread
            cannot be killed and is left to finish in the background). Implies chunksize 1.
        retries: how many more times a failed item is tried before it counts as failed.
        backoff: seconds before a failed item's first retry (default 0.05), doubled for each
            next one (at most 30 s) and drawn at random from zero to that ("full jitter"), so
            that calls that failed together, a server's 429s say, do not retry together; the
            other items run meanwhile. ``0``: retry at once.
        max_concurrency: at most this many calls at once, under every model: a cap on the
            workers (on the coroutines under asyncio), and on how far auto may raise them.
            Unlike ``workers``, it leaves auto free to choose fewer.
        max_rate: at most this many calls start per second, under every model, auto's
            probe and retries included: starts are spaced ``1 / max_rate`` apart, so that an
            API that allows 10 requests a second sees no more, in any second. Implies
            chunksize 1; the time an item waits for its start does not count toward
            ``timeout``.
        on_error: ``"raise"``: the first failure (the lowest index when ordered) stops the run
            and is re-raised as itself, a worker process's traceback chained, a note naming
            the item and its index. ``"collect"``:
            a :class:`pickpool.Failure` stands where the item failed. ``"skip"``: failed items
            are left out.
        progress: ``True``: a bar on stderr when it is a terminal or a notebook (items, rate,
            elapsed, time left; under auto, the model it chose); ``"always"``: there too, and
            elsewhere (a log, CI) a plain line every 5 s and at the end, no terminal codes.
            A callable: called with how many more items are done; a ``tqdm`` bar (anything
            with ``update(n)``): updated.
        client: for ``model='dask'``, the ``distributed.Client`` to run on (default: the
            active one); its workers' threads are the default ``workers``.
        fresh_workers: ``True``: start new worker processes and threads for this call, and
            stop them after it. By default workers are kept between calls (start-up is paid
            once), and so is any state an earlier call left in them: a global, a resource
            limit set with ``resource.setrlimit``, a thread-local.
        inner_threads: the native thread pools inside each call (BLAS and LAPACK under numpy
            and scipy, OpenMP under scikit-learn, PyTorch, OpenCV...). ``None`` (default):
            while several calls run at once, each pool is capped so that calls times inner
            threads fit the usable cores (2 processes on 2 cores: one BLAS thread each), and
            put back after the run; a call that runs alone keeps every core. An int: that many
            threads per pool, whatever the model. ``"leave"``: pools are left as they are.
        initializer: called with ``initargs`` in each new worker (a process, a thread, the
            event loop's thread) before its first item, to set up what the worker's calls
            use. What it sets in a global is each worker's own only where each worker has a
            process of its own: so, under auto, a plain initializer keeps the run to a plain
            loop or processes. ``worker_state=True`` lifts that.
        initargs: the initializer's arguments.
        worker_state: ``True``: what the initializer returns is its worker's state, and each
            call gets it first: ``fn(state, item)``. One state per worker process, per thread
            under threads, per event loop for coroutines (an ``async def`` initializer is
            awaited), made when the worker's first item starts: a connection made there is
            used only by the worker that made it, whichever model runs, so auto considers
            every model. A state with a ``close()`` method is closed by its worker when it
            is done with the run (awaited, for an async client's).
        max_tasks_per_child: under processes, a worker runs at most this many items, then a
            new one takes its place (for C extensions that leak).
        require: ``"sharedmem"``: the calls must share the caller's memory (what they write
            to a global, a list or an object, the caller sees), as joblib's
            ``require="sharedmem"``: auto then considers only the models that run calls in
            this process (a plain loop, threads, asyncio), and a model that does not is an
            error.
        report: ``True``: return ``(results, report)``, the :class:`pickpool.Report` of what
            ran, what auto decided and why, and what failed or was retried.

    Returns:
        The results, one per item (fewer under ``on_error="skip"``); with ``report=True``, a
        pair of them and the run's :class:`pickpool.Report`.

    Raises:
        ValueError: an unknown model, bad worker or chunk count, bad timeout.
        pickpool.BackendUnavailable: the model cannot run here (no dask extra or cluster;
            sub-interpreters before Python 3.14); the message says what to do.
        TypeError: ``fn`` not callable, ``items`` not iterable, or something that cannot be
            pickled to a worker process (the message names it and what to do).

    Example::

        >>> import pickpool
        >>> pickpool.map(abs, [-1, 2, -3], model="threads")
        [1, 2, 3]
    """
    run = Run(
        fn,
        items,
        more_items,
        check(
            model=model,
            workers=workers,
            chunksize=chunksize,
            ordered=ordered,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_concurrency=max_concurrency,
            max_rate=max_rate,
            on_error=on_error,
            progress=progress,
            client=client,
            fresh_workers=fresh_workers,
            inner_threads=inner_threads,
            initializer=initializer,
            initargs=initargs,
            worker_state=worker_state,
            max_tasks_per_child=max_tasks_per_child,
            require=require,
        ),
    )
    results = run.collect()
    return (results, run.report) if report is True else results


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[AsyncKeywords],
) -> Results[R]: ...
@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[AsyncKeywords],
) -> Results[R | Failure]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Keywords],
) -> Results[R]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[Keywords],
) -> Results[R | Failure]: ...
@overload
def imap(
    fn: Callable[..., Any],
    items: Iterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    **options: Unpack[Keywords],
) -> Results[Any]: ...
@overload
def imap(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    **options: Unpack[Keywords],
) -> Results[Any]: ...
def imap(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    model: Model | Sequence[NotAModel] = "auto",  # (Keywords says why)
    workers: int | None = None,
    max_concurrency: int | None = None,
    max_rate: float | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    on_error: OnError = "raise",
    progress: Progress = False,
    client: Any = None,
    fresh_workers: bool = False,
    inner_threads: InnerThreads = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    worker_state: bool = False,
    max_tasks_per_child: int | None = None,
    require: Require = None,
) -> Results[Any]:
    """Like :func:`map`, but a lazy iterator: results come as they are ready, memory stays flat.

    The input is read a window at a time (a few chunks per worker), so ``imap`` works on
    endless iterators and keeps memory bounded. Workers start on the first ``next()`` and
    stop when the loop ends, on ``.close()``, at the end of a ``with`` block (``break``
    included), or when the iterator is garbage-collected. Options are checked at the call,
    before anything runs. The iterator's :attr:`~pickpool.Results.report` says what ran and
    what auto decided.

    Example::

        >>> import itertools, pickpool
        >>> squares = pickpool.imap(lambda x: x * x, itertools.count(), model="threads")
        >>> [next(squares) for _ in range(4)]
        [0, 1, 4, 9]
        >>> squares.close()  # stops the workers
        >>> with pickpool.imap(fetch, urls) as pages:   # stopped at the end of the block
        ...     first = next(pages)
        >>> pages.report.model
        'threads'
    """
    run = Run(
        fn,
        items,
        more_items,
        check(
            model=model,
            workers=workers,
            chunksize=chunksize,
            ordered=ordered,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_concurrency=max_concurrency,
            max_rate=max_rate,
            on_error=on_error,
            progress=progress,
            client=client,
            fresh_workers=fresh_workers,
            inner_threads=inner_threads,
            initializer=initializer,
            initargs=initargs,
            worker_state=worker_state,
            max_tasks_per_child=max_tasks_per_child,
            require=require,
        ),
    )
    return Results(run.iterate(), run.report)


@overload
async def amap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[Any]: ...
@overload
async def amap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[Any], Report]: ...
@overload
async def amap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[Any]: ...
@overload
async def amap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[Any], Report]: ...
@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[AsyncKeywords],
) -> list[R]: ...
@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[AsyncKeywords],
) -> list[R | Failure]: ...
@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[True],
    **options: Unpack[AsyncKeywords],
) -> tuple[list[R], Report]: ...
@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[True],
    **options: Unpack[AsyncKeywords],
) -> tuple[list[R | Failure], Report]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[R]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[Keywords],
) -> list[R | Failure]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[R], Report]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[True],
    **options: Unpack[Keywords],
) -> tuple[list[R | Failure], Report]: ...
async def amap(
    fn: Callable[[Any], Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *more_items: Iterable[Any],
    model: Model | Sequence[NotAModel] = "auto",  # (Keywords says why)
    workers: int | None = None,
    max_concurrency: int | None = None,
    max_rate: float | None = None,
    chunksize: int | None = None,
    ordered: bool = True,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    on_error: OnError = "raise",
    progress: Progress = False,
    client: Any = None,
    fresh_workers: bool = False,
    inner_threads: InnerThreads = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    worker_state: bool = False,
    max_tasks_per_child: int | None = None,
    require: Require = None,
    report: bool = False,
) -> list[Any] | tuple[list[Any], Report]:
    """:func:`map` for callers already inside an event loop: ``await pickpool.amap(f, xs)``.

    ``items`` may be an async iterable (an ``async for`` source: an async generator, a
    database cursor), read on the caller's loop as the run needs them. An ``async def``
    function's coroutines run as tasks of the caller's own loop under
    ``model='asyncio'`` and under auto (whatever it measures), so they may use what that loop
    owns (a client session, a connection pool); a model named that runs them on loops of its
    own refuses a function that visibly carries such a thing. Other models run in a helper
    thread while the loop stays free. Cancelling the awaiting task stops the run and
    its workers before the cancellation propagates. ``report=True`` returns ``(results,
    report)``, as :func:`map` does.

    Example::

        async def main():
            pages = await pickpool.amap(fetch, urls, model='asyncio', workers=100)
    """
    options = check(
        model=model,
        workers=workers,
        chunksize=chunksize,
        ordered=ordered,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_concurrency=max_concurrency,
        max_rate=max_rate,
        on_error=on_error,
        progress=progress,
        client=client,
        fresh_workers=fresh_workers,
        inner_threads=inner_threads,
        initializer=initializer,
        initargs=initargs,
        worker_state=worker_state,
        max_tasks_per_child=max_tasks_per_child,
        require=require,
    )
    _not_bound_here(fn, options)
    items, async_input = sync_items(items)
    run = Run(fn, items, more_items, options, async_input=async_input)
    if run.runs_on_caller_loop:
        began = time.perf_counter()
        results = run.aiterate()
        try:
            out = [value async for value in results]
        finally:
            await results.aclose()
            run.report.seconds = time.perf_counter() - began
    else:
        out = await in_thread(run.collect)
    return (out, run.report) if report is True else out


@overload
def starmap(
    fn: Callable[..., Awaitable[R]],
    items: Iterable[Iterable[Any]],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[AsyncKeywords],
) -> list[R]: ...
@overload
def starmap(
    fn: Callable[..., Awaitable[R]],
    items: Iterable[Iterable[Any]],
    *,
    on_error: Literal["collect"],
    **options: Unpack[AsyncKeywords],
) -> list[R | Failure]: ...
@overload
def starmap(
    fn: Callable[..., R],
    items: Iterable[Iterable[Any]],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Keywords],
) -> list[R]: ...
@overload
def starmap(
    fn: Callable[..., R],
    items: Iterable[Iterable[Any]],
    *,
    on_error: Literal["collect"],
    **options: Unpack[Keywords],
) -> list[R | Failure]: ...
@overload
def starmap(
    fn: Callable[..., Any],
    items: Iterable[Iterable[Any]],
    *,
    worker_state: Literal[True],
    on_error: OnError = ...,
    **options: Unpack[Keywords],
) -> list[Any]: ...
def starmap(
    fn: Callable[..., Any],
    items: Iterable[Iterable[Any]],
    *,
    on_error: OnError = "raise",
    worker_state: bool = False,
    **options: Unpack[Keywords],
) -> list[Any]:
    """:func:`map` with each item unpacked into ``fn``'s arguments, as ``itertools.starmap``.

    Takes the same options as :func:`map` (``report`` aside).

    Example::

        >>> import pickpool
        >>> pickpool.starmap(pow, [(2, 3), (10, 2)], model="threads")
        [8, 100]
    """
    check_fn(fn)
    keywords = {**options, "on_error": on_error, "worker_state": worker_state}
    run = Run(fn, items, (), from_keywords("starmap", keywords), starred=True)
    return run.collect()


@overload
def aimap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    **options: Unpack[Keywords],
) -> AsyncResults[Any]: ...
@overload
def aimap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *more_items: Iterable[Any],
    worker_state: Literal[True],
    on_error: OnError = ...,
    **options: Unpack[Keywords],
) -> AsyncResults[Any]: ...
@overload
def aimap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[AsyncKeywords],
) -> AsyncResults[R]: ...
@overload
def aimap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[AsyncKeywords],
) -> AsyncResults[R | Failure]: ...
@overload
def aimap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Keywords],
) -> AsyncResults[R]: ...
@overload
def aimap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[Keywords],
) -> AsyncResults[R | Failure]: ...
def aimap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *more_items: Iterable[Any],
    on_error: OnError = "raise",
    worker_state: bool = False,
    **options: Unpack[Keywords],
) -> AsyncResults[Any]:
    """:func:`imap` for callers inside an event loop: ``async for r in pickpool.aimap(f, xs)``.

    Results come as they are ready, in order unless ``ordered=False``; the input (an
    iterable, or an async iterable read on the caller's loop) is read a window at a time.
    Takes the same options as :func:`map`, checked at the call; what it returns is an async
    iterator whose :attr:`~pickpool.AsyncResults.report` says what ran.
    An ``async def`` function's coroutines run as tasks of the caller's loop under
    ``model='asyncio'`` and under auto; other models run in a helper thread while the loop
    stays free. Leaving the loop (``break``, an exception, the task cancelled), or
    ``async with``'s end, stops the run and its workers.

    Example::

        async def main():
            async with pickpool.aimap(fetch, urls) as pages:
                async for page in pages:
                    print(len(page))
            print(pages.report)
    """
    if "report" in options:
        raise TypeError("aimap() takes no report=: what it returns has .report")
    keywords = {**options, "on_error": on_error, "worker_state": worker_state}
    checked = from_keywords("aimap", keywords)
    _not_bound_here(fn, checked)
    items, async_input = sync_items(items)
    run = Run(fn, items, more_items, checked, async_input=async_input)
    return AsyncResults(_aimap(run), run.report)


async def _aimap(run: Run) -> AsyncGenerator[Any, None]:
    results = run.aiterate() if run.runs_on_caller_loop else blocks_in_thread(run.feed)
    try:
        async for value in results:
            yield value
    finally:
        await results.aclose()


def _not_bound_here(fn: Callable[..., Any], options: Options) -> None:
    """Coroutines sent to loops of their own (a model named that does not run them on the
    caller's) must not carry what belongs to the caller's loop: a ValueError says so, where
    it can be seen (see ``bound_to_loop``), rather than each call failing."""
    model = options.model
    if not is_async_callable(fn) or model == "auto" or _backends.model(model).loop_runner:
        return
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # (called outside a loop: nothing can belong to the caller's yet)
    what = bound_to_loop(fn, loop)
    if what is not None:
        raise ValueError(
            f"fn's {what} belongs to this event loop, and model={model!r} runs "
            "coroutines on event loops of their own, where it cannot be used: pass "
            "model='asyncio' (or 'auto') to run them on this loop, or make it inside fn"
        )
