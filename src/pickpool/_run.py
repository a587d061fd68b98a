"""One call of ``map``, ``imap``, ``amap``, ``starmap`` or ``aimap``: :class:`Run`.

A run holds what the call runs (the function, its input as one iterator, the checked
:class:`~pickpool._options.Options`), on what (a model's plan, or auto's phases), and what the
caller gets: results under the ``on_error`` policy, the progress bar, the
:class:`~pickpool.Report`. The public functions (``_api``) only check their options and pick
how the results are handed over: a list, an iterator, or awaited.
"""

from __future__ import annotations

import contextlib
import reprlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any

from . import _backends
from ._advise import Advice
from ._auto import AutoRun
from ._cursor import Items, Prefetched, Source
from ._driver import drive
from ._failure import Failure
from ._options import Options, check_fn, length_hint
from ._plan import Plan
from ._progress import bar
from ._results import Leg, Report
from ._schedule import Block, Done
from ._star import star
from ._task import OK, chain_remote, is_async_callable, release


def _no_progress(count: int) -> None:
    pass


def inputs(
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


def _shipped(model: str, fn: Any) -> bytes | None:
    """``fn`` pickled, if ``model`` sends it pickled: here rather than when the pool starts, so
    that an unpicklable function is reported at the call, even by imap."""
    if not _backends.traits(model).pickles:
        return None
    from ._pickling import dumps_function

    return dumps_function(fn)


def _source(
    iterator: Iterator[Any],
    options: Options,
    length: int | None,
    plan: Plan | None,
    *,
    off_loop: bool = False,
) -> Source:
    """The run's input. Items one at a time from an input of unknown length (a generator, a
    queue): read in a helper thread, so that a result is handed out while the input waits for
    its next item, which may come from that result (a crawler). Known lengths never wait; the
    plain loop reads an item, runs it and hands its result out before it reads the next.
    ``off_loop``: an async iterable's items, for a run on the caller's event loop: read in a
    helper thread too, as the loop's own thread cannot wait for them."""
    inline = plan is not None and plan.inline
    if off_loop or (options.chunksize == 1 and length is None and not inline):
        return Prefetched(iterator)
    return Items(iterator)


def _given(options: Options, plan: Plan) -> Leg:
    """The one leg of a run on the model given."""
    given = f"model={options.model!r} given"
    if plan.model != options.model:
        given += f", run by {plan.model} (under a timeout)"
    return Leg(plan.model, why=given)


def output(done: Done, report: Report, on_error: str) -> tuple[bool, Any]:
    """(keep, value) for one finished item, told to ``report``; raises under
    ``on_error="raise"``."""
    report.done += 1
    report.retries += done.attempts - 1
    if done.status == OK:
        return True, done.value
    report.failed.append(done.index)
    exc: BaseException = done.value
    if on_error == "raise":
        chain_remote(exc, done.traceback)
        # (PEP 678: which call it was, without a wrapper that would change its type.)
        exc.add_note(f"pickpool: raised by item {done.index}: {reprlib.repr(done.item)}")
        raise exc
    if on_error == "skip":
        report.skipped.append(done.index)
        release(exc)  # what the failed call built goes now, not at a garbage collection
        return False, None
    return True, Failure(done.index, done.item, exc, done.traceback or "", done.attempts)


class Run:
    """One call's checked inputs: what runs, on what, with which error policy.

    Nothing runs until results are asked for; every check has passed by then.
    """

    def __init__(
        self,
        fn: Any,
        items: Any,
        more_items: tuple[Any, ...],
        options: Options,
        *,
        starred: bool = False,
        async_input: bool = False,
    ) -> None:
        check_fn(fn)
        self._fn_name = getattr(fn, "__name__", "fn")
        fn = options.bind(fn)  # (first: a worker's state is fn's first argument, then *item)
        iterator, self.length, fn = inputs(star(fn) if starred else fn, items, more_items)
        self.options = options
        self.is_async = is_async_callable(fn)
        self.description = f"{self._fn_name} [{options.model}]"
        self.auto: AutoRun | None = None
        self.plan: Plan | None = None
        if options.model != "auto":
            self.plan = options.plan(options.model, is_async=self.is_async, length=self.length)
        off_loop = async_input and self.runs_on_caller_loop
        self.source = _source(iterator, options, self.length, self.plan, off_loop=off_loop)
        if self.plan is None:
            self.auto = AutoRun(
                fn, self.source, is_async=self.is_async, length=self.length, options=options
            )
            self.auto.on_decide = self._decided
            self.report = Report("auto", 0, None)
            self.report.decisions = self.auto.decisions
            self.auto.report_legs = self.report.legs
            return
        plan = self.plan
        self.setup = options.setup(
            fn, plan, is_async=self.is_async, fn_bytes=_shipped(plan.model, fn)
        )
        self.report = Report(plan.model, plan.workers, None if plan.adaptive else plan.chunksize)
        self._given = _given(options, plan)
        self.report.legs.append(self._given)

    def _decided(self, advice: Advice, plan: Plan) -> None:
        report = self.report
        if report.advice is None:
            report.advice = advice
        # (The count decided, not a limiter's ceiling; Report.settle: what ran, at the end.)
        report.model, report.workers = plan.model, min(plan.workers, advice.workers)
        report.chunksize = None if plan.adaptive else plan.chunksize
        self.description = f"{self._fn_name} [auto: {plan.model}]"

    @property
    def runs_on_caller_loop(self) -> bool:
        """Whether ``amap`` runs it natively on the caller's loop (else in a helper thread)."""
        if self.plan is None:
            return self.is_async  # auto: a coroutine function's probe runs on the loop
        return _backends.model(self.plan.model).loop_runner is not None

    def dones(self, cancel: threading.Event | None = None) -> Generator[Done | Block, None, None]:
        """What the loop hands out for this call."""
        if self.auto is not None:
            return self.auto.dones(cancel, blocks=True)
        assert self.plan is not None
        backend = _backends.load(self.plan.model)
        leg = self._given
        return drive(
            self.source, self.plan, self.setup, backend, cancel=cancel, blocks=True, leg=leg
        )

    def feed(
        self, hand: Callable[[list[Any]], bool], cancel: threading.Event | None = None
    ) -> None:
        """Hand the results to ``hand`` a block at a time, the progress bar advancing, until
        the input ends or ``hand`` returns False. A plain loop, not a generator: what the
        function raised (a StopIteration too) reaches the caller as itself, as from a loop."""
        dones = self.dones(cancel)
        try:
            with self._bar() as advance:
                for done in dones:
                    if not hand(self._results(done, advance)):
                        return
        finally:
            dones.close()
            self.source.close()
            self.report.settle()

    def iterate(self, cancel: threading.Event | None = None) -> Generator[Any, None, None]:
        """The results one by one (``imap``)."""
        dones = self.dones(cancel)
        try:
            with self._bar() as advance:
                for done in dones:
                    yield from self._results(done, advance)
        finally:
            dones.close()
            self.source.close()
            self.report.settle()

    def collect(self, cancel: threading.Event | None = None) -> list[Any]:
        """The results as a list (``map``)."""
        results: list[Any] = []
        began = time.perf_counter()

        def extend(values: list[Any]) -> bool:
            results.extend(values)
            return True

        try:
            self.feed(extend, cancel)
        finally:
            self.report.seconds = time.perf_counter() - began
        return results

    async def aiterate(self) -> AsyncGenerator[Any, None]:
        """The results one by one, run on the caller's event loop (``amap``, ``aimap``)."""
        from ._aio import adrive

        dones: AsyncGenerator[Done | Block, None]
        if self.auto is not None:
            dones = self.auto.adones()
        else:
            assert self.plan is not None
            dones = adrive(self.source, self.plan, self.setup, blocks=True, leg=self._given)
        try:
            with self._bar() as advance:
                async for done in dones:
                    for value in self._results(done, advance):
                        yield value
        finally:
            await dones.aclose()
            self.source.close()
            self.report.settle()

    def _results(self, done: Done | Block, advance: Callable[[int], None]) -> list[Any]:
        """What ``done`` adds to the output (nothing for a skipped failure); advances the bar."""
        if type(done) is Block:
            advance(len(done.values))
            self.report.done += len(done.values)
            return done.values
        assert type(done) is Done
        advance(1)
        keep, value = output(done, self.report, self.options.on_error)
        return [value] if keep else []

    def _bar(self) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        if self.options.progress is None:
            return contextlib.nullcontext(_no_progress)
        return bar(self.options.progress, self.length, lambda: self.description)
