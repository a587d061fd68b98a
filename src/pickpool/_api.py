"""``map``, ``imap`` and ``amap``: argument checks, model resolution, error policy."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from typing import Any, Literal, TypedDict, TypeVar, Unpack, overload

from . import _backends
from ._advise import Advice
from ._auto import AutoRun, in_thread
from ._driver import Block, Done, Plan, drive
from ._inner import InnerThreads, check_inner_threads
from ._options import (
    ALL_MODELS,
    DEFAULT_BACKOFF,
    Wishes,
    check_fn,
    length_hint,
    make_plan,
    positive_int,
    worker_options,
)
from ._outcome import Failure
from ._progress import bar, wants_progress
from ._results import Report, Results
from ._star import star
from ._task import OK, chain_remote, is_async_callable, release

T = TypeVar("T")
R = TypeVar("R")
Model = Literal["auto", _backends.ModelName]
OnError = Literal["raise", "collect", "skip"]
Progress = bool | Literal["always"] | Callable[[int], Any] | Any  # Any: a tqdm bar


class _Options(TypedDict, total=False):
    """The options every overload of ``map``, ``imap`` and ``amap`` takes alike.

    ``on_error`` and ``report`` are not here: their values pick the overload (the result type),
    so the overloads spell them out. The implementations list every option, with its default.
    """

    model: Model
    workers: int | None
    max_concurrency: int | None
    max_rate: float | None
    chunksize: int | None
    ordered: bool
    timeout: float | None
    retries: int
    backoff: float
    progress: Progress
    client: Any
    fresh_workers: bool
    inner_threads: InnerThreads
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None


def _no_progress(count: int) -> None:
    pass


def _check_model(model: object) -> str:
    if not isinstance(model, str):
        raise TypeError(f"model must be a string such as 'threads', not {type(model).__name__}")
    if model not in ALL_MODELS:
        raise ValueError(f"unknown model {model!r}; use one of {', '.join(map(repr, ALL_MODELS))}")
    return model


def _inputs(
    fn: Any, items: Any, more_items: tuple[Any, ...]
) -> tuple[Iterator[Any], int | None, Any]:
    """The items as one iterator, their count if known, and ``fn`` to call on each."""
    iterators = []
    for which, iterable in enumerate((items, *more_items)):
        try:
            iterators.append(iter(iterable))
        except TypeError:
            what = "items" if not which else f"iterable {which + 1}"
            raise TypeError(
                f"{what} must be an iterable (a list, a generator...), not "
                f"{type(iterable).__name__}"
            ) from None
    length = length_hint(items)
    if not more_items:
        return iterators[0], length, fn
    # Several iterables, as builtins.map takes them: zipped (to the shortest), and each tuple
    # unpacked into fn's arguments.
    lengths = [length, *(length_hint(m) for m in more_items)]
    length = None if None in lengths else min(n for n in lengths if n is not None)
    return zip(iterators[0], *more_items, strict=False), length, star(fn)


def _prepared(name: str, client: object, workers: object) -> tuple[Any, Any]:
    """``(client, workers)`` as ``name``'s model takes them, its pre-flight checks passed."""
    kind = None if name == "auto" else _backends.traits(name)
    if client is not None and (kind is None or not kind.takes_client):
        clustered = " or ".join(
            f"model={t.name!r}" for t in _backends.TRAITS.values() if t.takes_client
        )
        raise ValueError(f"client= is for {clustered}, not model={name!r}")
    if kind is not None and kind.prepare is not None:
        # Here, so that a missing extra or cluster is reported at the call, even by imap.
        return kind.prepare(client, workers)
    return client, workers


def _shipped(model: str, fn: Any) -> bytes | None:
    """``fn`` pickled, if ``model`` sends it pickled: here rather than when the pool starts, so
    that an unpicklable function is reported at the call, even by imap."""
    if not _backends.traits(model).pickles:
        return None
    from ._pickling import dumps_function

    return dumps_function(fn)


# (Long on purpose: one call's checked inputs and error policy, for map, imap and amap alike.)
class _Run:
    """One call's checked inputs: what runs, on what, with which error policy."""

    # (Long on purpose: every option checked at the call, before anything runs.)
    def __init__(
        self,
        fn: Any,
        items: Any,
        *,
        model: object,
        workers: object,
        chunksize: object,
        ordered: object,
        timeout: object,
        retries: object,
        on_error: object,
        progress: object,
        backoff: object = 0.0,
        max_concurrency: object = None,
        max_rate: object = None,
        client: object = None,
        fresh_workers: object = False,
        inner_threads: object = None,
        more_items: tuple[Any, ...] = (),
        initializer: object = None,
        initargs: object = (),
        max_tasks_per_child: object = None,
    ) -> None:
        check_fn(fn)
        self._fn_name = getattr(fn, "__name__", "fn")
        self.source, self.length, fn = _inputs(fn, items, more_items)
        worker_setup = worker_options(model, initializer, initargs, max_tasks_per_child)
        if initializer is not None or worker_setup["max_tasks_per_child"] is not None:
            # State an initializer leaves, or a worker's count of items, belongs to this run:
            # its workers are new, and are not kept for the next.
            fresh_workers = True
        self.is_async = is_async_callable(fn)
        name = _check_model(model)
        if not isinstance(fresh_workers, bool):
            raise TypeError(f"fresh_workers must be True or False, not {fresh_workers!r}")
        inner = check_inner_threads(inner_threads)
        client, workers = _prepared(name, client, workers)
        # Under "auto" the options are checked here all the same, before anything runs.
        self.plan: Plan = make_plan(
            model=_backends.CHECKED_AS_AUTO if name == "auto" else name,
            is_async=self.is_async,
            length=self.length,
            workers=workers,
            chunksize=chunksize,
            ordered=ordered,
            timeout=timeout,
            retries=retries,
            on_error=on_error,
            backoff=backoff,
            max_concurrency=max_concurrency,
            max_rate=max_rate,
        )
        self.setup = _backends.Setup(
            fn,
            self.plan.workers,
            self.is_async,
            self.plan.timeout,
            _shipped(self.plan.model, fn),
            client=client,
            fresh=fresh_workers,
            inner_threads=inner,
            **worker_setup,
        )
        self.auto: AutoRun | None = None
        if name == "auto":
            wishes = Wishes(
                workers=positive_int("workers", workers),
                chunksize=positive_int("chunksize", chunksize),
                timeout=self.plan.timeout,
                retries=self.plan.retries,
                backoff=self.plan.backoff,
                max_concurrency=positive_int("max_concurrency", max_concurrency),
                pacer=self.plan.pacer,
                on_error=str(on_error),
                ordered=self.plan.ordered,
                fresh_workers=fresh_workers,
                inner_threads=inner,
                **worker_setup,
            )
            self.auto = AutoRun(
                fn, self.source, is_async=self.is_async, length=self.length, wishes=wishes
            )
            self.auto.on_decide = self._decided
        self.on_error = on_error
        self.progress = wants_progress(progress)
        self.description = f"{self._fn_name} [{name}]"
        self.report = Report(
            name,
            self.plan.workers,
            None if self.plan.adaptive else self.plan.chunksize,
        )
        if self.auto is not None:
            self.report.decisions = self.auto.decisions

    def _decided(self, advice: Advice, plan: Plan) -> None:
        report = self.report
        if report.advice is None:
            report.advice = advice
        report.model, report.workers = plan.model, plan.workers
        report.chunksize = None if plan.adaptive else plan.chunksize
        self.description = f"{self._fn_name} [auto: {plan.model}]"

    def output(self, done: Done) -> tuple[bool, Any]:
        """(keep, value) for one finished item, raising under on_error="raise"."""
        report = self.report
        report.done += 1
        report.retries += done.attempts - 1
        if done.status == OK:
            return True, done.value
        report.failed.append(done.index)
        exc: BaseException = done.value
        if self.on_error == "raise":
            chain_remote(exc, done.traceback)
            raise exc
        if self.on_error == "skip":
            report.skipped.append(done.index)
            release(exc)  # what the failed call built goes now, not at a garbage collection
            return False, None
        return True, Failure(done.index, done.item, exc, done.traceback or "", done.attempts)

    @property
    def runs_on_caller_loop(self) -> bool:
        """Whether ``amap`` runs it natively on the caller's loop (else in a helper thread)."""
        return _backends.traits(self.plan.model).on_loop if self.auto is None else self.is_async

    def dones(self, cancel: threading.Event | None = None) -> Generator[Done | Block, None, None]:
        """What the driver hands out for this call."""
        if self.auto is not None:
            return self.auto.dones(cancel, blocks=True)
        model = _backends.load(self.plan.model)
        return drive(self.source, self.plan, self.setup, model, cancel=cancel, blocks=True)

    def iterate(self, cancel: threading.Event | None = None) -> Generator[Any, None, None]:
        dones = self.dones(cancel)
        try:
            with self._bar() as advance:
                for done in dones:
                    yield from self._results(done, advance)
        finally:
            dones.close()

    def collect(self, cancel: threading.Event | None = None) -> list[Any]:
        """:meth:`iterate` into a list, a block of results at a time."""
        results: list[Any] = []
        began = time.perf_counter()
        dones = self.dones(cancel)
        try:
            with self._bar() as advance:
                for done in dones:
                    results += self._results(done, advance)
        finally:
            dones.close()
            self.report.seconds = time.perf_counter() - began
        return results

    async def aiterate(self) -> AsyncGenerator[Any, None]:
        from ._aio import adrive

        dones: AsyncGenerator[Done | Block, None]
        if self.auto is not None:
            dones = self.auto.adones()
        else:
            dones = adrive(self.source, self.plan, self.setup, blocks=True)
        try:
            with self._bar() as advance:
                async for done in dones:
                    for value in self._results(done, advance):
                        yield value
        finally:
            await dones.aclose()

    def _results(self, done: Done | Block, advance: Callable[[int], None]) -> list[Any]:
        """What ``done`` adds to the output (nothing for a skipped failure); advances the bar."""
        if type(done) is Block:
            advance(len(done.values))
            self.report.done += len(done.values)
            return done.values
        assert type(done) is Done
        advance(1)
        keep, value = self.output(done)
        return [value] if keep else []

    def _bar(self) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        if self.progress is None:
            return contextlib.nullcontext(_no_progress)
        return bar(self.progress, self.length, lambda: self.description)


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
    **options: Unpack[_Options],
) -> list[Any]: ...
@overload
def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    report: Literal[True],
    **options: Unpack[_Options],
) -> tuple[list[Any], Report]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[_Options],
) -> list[R]: ...
@overload
def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[_Options],
) -> list[R | Failure]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    report: Literal[False] = ...,
    **options: Unpack[_Options],
) -> list[R]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    report: Literal[False] = ...,
    **options: Unpack[_Options],
) -> list[R | Failure]: ...
def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    model: Model = "auto",
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
    max_tasks_per_child: int | None = None,
    report: bool = False,
) -> list[Any] | tuple[list[Any], Report]:
    """Call ``fn`` on every item, concurrently, and return the results as a list.

    ``pickpool.map(f, xs)`` returns what ``[f(x) for x in xs]`` returns, whichever model runs
    it; an ``async def`` function's coroutines are awaited (``[await f(x) for x in xs]``).

    Args:
        fn: a function of one argument, plain or ``async def``. For several arguments per
            item, wrap it: ``pickpool.star(fn)``.
        items: any iterable; read lazily, a window at a time.
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
            and is re-raised as itself, a worker process's traceback chained. ``"collect"``:
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
    run = _Run(
        fn,
        items,
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
        more_items=more_items,
        initializer=initializer,
        initargs=initargs,
        max_tasks_per_child=max_tasks_per_child,
    )
    results = run.collect()
    return (results, run.report) if report is True else results


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[_Options],
) -> Results[R]: ...
@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[_Options],
) -> Results[R | Failure]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[_Options],
) -> Results[R]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[_Options],
) -> Results[R | Failure]: ...
@overload
def imap(
    fn: Callable[..., Any],
    items: Iterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    **options: Unpack[_Options],
) -> Results[Any]: ...
def imap(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    model: Model = "auto",
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
    max_tasks_per_child: int | None = None,
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
    run = _Run(
        fn,
        items,
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
        more_items=more_items,
        initializer=initializer,
        initargs=initargs,
        max_tasks_per_child=max_tasks_per_child,
    )
    return Results(run.iterate(), run.report)


@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[_Options],
) -> list[R]: ...
@overload
async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[_Options],
) -> list[R | Failure]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[_Options],
) -> list[R]: ...
@overload
async def amap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["collect"],
    **options: Unpack[_Options],
) -> list[R | Failure]: ...
@overload
async def amap(
    fn: Callable[..., Any],
    items: Iterable[Any],
    more: Iterable[Any],
    /,
    *more_items: Iterable[Any],
    on_error: OnError = ...,
    **options: Unpack[_Options],
) -> list[Any]: ...
async def amap(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *more_items: Iterable[Any],
    model: Model = "auto",
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
    max_tasks_per_child: int | None = None,
) -> list[Any]:
    """:func:`map` for callers already inside an event loop: ``await pickpool.amap(f, xs)``.

    Under ``model='asyncio'`` the items run as tasks of the caller's own loop, so coroutines
    may use what that loop owns (a client session, a connection pool). Other models run in a
    helper thread while the loop stays free. Cancelling the awaiting task stops the run and
    its workers before the cancellation propagates.

    Example::

        async def main():
            pages = await pickpool.amap(fetch, urls, model='asyncio', workers=100)
    """
    run = _Run(
        fn,
        items,
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
        more_items=more_items,
        initializer=initializer,
        initargs=initargs,
        max_tasks_per_child=max_tasks_per_child,
    )
    if run.runs_on_caller_loop:
        results = run.aiterate()
        try:
            return [value async for value in results]
        finally:
            await results.aclose()
    result: list[Any] = await in_thread(run.collect)
    return result


def starmap(fn: Callable[..., R], items: Iterable[Iterable[Any]], **options: Any) -> list[R]:
    """:func:`map` with each item unpacked into ``fn``'s arguments, as ``itertools.starmap``.

    Takes the same options as :func:`map`.

    Example::

        >>> import pickpool
        >>> pickpool.starmap(pow, [(2, 3), (10, 2)], model="threads")
        [8, 100]
    """
    check_fn(fn)
    results: list[R] = map(star(fn), items, **options)
    return results


# aimap under a model that does not run on the caller's loop: blocks of results a helper
# thread may hand over before the consumer takes them.
AIMAP_AHEAD = 4


# (Complex on purpose: two bridges (the caller's loop, a helper thread) and their cancellation.)
async def aimap(  # noqa: C901
    fn: Callable[..., Any], items: Iterable[Any], *more_items: Iterable[Any], **options: Any
) -> AsyncIterator[Any]:
    """:func:`imap` for callers inside an event loop: ``async for r in pickpool.aimap(f, xs)``.

    Results come as they are ready, in order unless ``ordered=False``; the input is read a
    window at a time. Takes the same options as :func:`map` (``report`` aside). Under
    ``model='asyncio'`` the items run as tasks of the caller's loop; other models run in a
    helper thread while the loop stays free. Leaving the loop (``break``, an exception, the
    task cancelled) stops the run and its workers.

    Example::

        async def main():
            async for page in pickpool.aimap(fetch, urls, model='asyncio'):
                print(len(page))
    """
    if "report" in options:
        raise TypeError("aimap() takes no report=: its runs are read as they go")
    run = _Run(fn, items, more_items=more_items, **_run_options(options))
    if run.runs_on_caller_loop:
        results = run.aiterate()
        try:
            async for value in results:
                yield value
        finally:
            await results.aclose()
        return
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[Any]] = asyncio.Queue()
    room = threading.Semaphore(AIMAP_AHEAD)

    def produce(cancel: threading.Event) -> None:
        dones = run.dones(cancel)
        try:
            with run._bar() as advance:
                for done in dones:
                    values = run._results(done, advance)
                    # Wait for the consumer to take earlier blocks (the run stops if asked).
                    while not room.acquire(timeout=0.05):
                        if cancel.is_set():
                            return
                    loop.call_soon_threadsafe(queue.put_nowait, values)
        finally:
            dones.close()

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


def _run_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the defaults :func:`map` has, for :class:`_Run`."""
    defaults: dict[str, Any] = {
        "model": "auto",
        "workers": None,
        "chunksize": None,
        "ordered": True,
        "timeout": None,
        "retries": 0,
        "backoff": DEFAULT_BACKOFF,
        "on_error": "raise",
        "progress": False,
    }
    unknown = set(options) - set(defaults) - _RUN_EXTRAS
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    return defaults | options


_RUN_EXTRAS = {
    "max_concurrency",
    "max_rate",
    "client",
    "fresh_workers",
    "inner_threads",
    "initializer",
    "initargs",
    "max_tasks_per_child",
}
