"""``model="auto"`` and :func:`advise`: probe the first items, decide, run the rest.

Auto runs the probe's phases (``_probe.Pilot``) through the ordinary driver, handing their
results on as they come, then asks the cost model (``_advise``) for the fastest model for the
items left, and runs those on it, numbered on from where the probe stopped. Every item is
run exactly once, in one of the phases; order and error handling are those of any run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from typing import Any, Final

from . import _backends, _log
from ._advise import LOOP_BLOCKED, Advice, decide
from ._cursor import Cursor
from ._driver import Block, Done, Plan, drive
from ._options import Wishes, check_fn, length_hint, positive_seconds
from ._probe import ADVISE_SHARE, WAITING_SHARE, Phase, Pilot
from ._readings import Evidence
from ._reasons import format_seconds
from ._task import OK, is_async_callable

# Auto probes at most about this long, and for at most this share of the batch's serial time
# (beyond a few calls); ``advise``'s default budget is the same second.
AUTO_BUDGET: Final = 1.0
AUTO_SHARE: Final = 0.015
# Drift: the pace auto re-decides at (5x off the prediction, either way), how long it watches
# before judging, and how often it may re-decide in one run.
DRIFT: Final = 5.0
DRIFT_WATCH: Final = 0.5
MAX_REDECISIONS: Final = 3
# Items predicted faster than this are not watched: timing them would cost a third of each.
WATCH_MIN_PACE: Final = 20e-6
# The most threads auto's hill climbing may reach.
CLIMB_CAP: Final = 128
# Calls that wait start this many at once; the limiter's slow start takes them up from there.
RAMP_START: Final = 8


class _Watch:
    """Watches the chosen model's pace against the prediction.

    The pace is the time the run had control (not the time the consumer of ``imap`` spent
    between items) per item handed out, over a window of at least :data:`DRIFT_WATCH` seconds
    and 10 items. When it is :data:`DRIFT` times slower or faster than predicted, :attr:`drift`
    says which, and the run's gate hands out no more items, so the run winds down. Faster is
    only judged when the consumer is not what sets the pace.
    """

    def __init__(self, predicted: float) -> None:
        self._predicted = predicted
        self._min_items = 10  # and a few items, so that one slow item is not a drift
        self._began = time.perf_counter()
        self._busy = 0.0
        self._count = 0
        self.drift: str | None = None
        self.pace: float | None = None  # seconds per item over the window that drifted

    def steady(self) -> bool:
        """No drift seen: the run may take another item."""
        return self.drift is None

    def saw(self, busy: float, count: int) -> None:
        """``count`` items handed out, after the run had control for ``busy`` seconds."""
        self._busy += busy
        self._count += count
        if self._busy < DRIFT_WATCH or self._count < self._min_items or self._predicted <= 0:
            return
        pace = self._busy / self._count
        elapsed = time.perf_counter() - self._began
        if pace > DRIFT * self._predicted:
            self.drift, self.pace = "slower", pace
        elif pace * DRIFT < self._predicted and self._busy > 0.5 * elapsed:
            self.drift, self.pace = "faster", pace
        # A new window: what counts is the recent pace, not the average since the start.
        self._busy, self._count, self._began = 0.0, 0, time.perf_counter()

    def why(self, model: str) -> str:
        """What drifted, in the words of the log's re-decision."""
        return (
            f"{model} ran {format_seconds(self.pace or 0.0)} per item, predicted "
            f"{format_seconds(self._predicted)}: {self.drift} than predicted"
        )


class AutoRun:
    """The phases of one ``model="auto"`` call, and the decision between them.

    :meth:`legs` is the one sequence of phases both paths run: :meth:`dones` through
    ``drive``, :meth:`adones` on the caller's loop (or a thread); each tells :meth:`saw`
    of every item of a probe's phase or of a watched rest, so that the probe reads it and the
    watch judges the pace.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        source: Iterator[Any],
        *,
        is_async: bool,
        length: int | None,
        wishes: Wishes,
    ) -> None:
        self.fn, self.is_async, self.wishes = fn, is_async, wishes
        self.cursor = Cursor(source, length)
        self.fn_bytes: bytes | None = None  # pickled for processes once, by the first probe
        self.probe_seconds = 0.0  # in the probe's phases, consumer included (for benchmarks)
        self.pilot = self._new_pilot()
        self.advice: Advice | None = None
        self.decisions: list[Advice] = []  # the first, then one per re-decision after a drift
        # Seconds per item a model was seen to take when it drifted slower than predicted.
        self.observed: dict[str, float] = {}
        self._again: str | None = None  # why the next decision is a re-decision
        self.watching: _Watch | None = None  # the rest's, while it runs watched
        # Told each decision and the plan it runs on (the caller's Report).
        self.on_decide: Callable[[Advice, Plan], None] | None = None

    def _new_pilot(self) -> Pilot:
        pilot = Pilot(
            self.fn,
            self.cursor,
            is_async=self.is_async,
            budget=AUTO_BUDGET,
            share=AUTO_SHARE,
            wishes=self.wishes,
            ramp=False,
        )
        pilot.readings.fn_bytes = self.fn_bytes
        return pilot

    def rest(self) -> tuple[Plan, _backends.Setup] | None:
        """After the probe: the plan for the items left, or None if there are none."""
        pilot = self.pilot
        if self.cursor.exhausted or pilot.evidence is None:
            return None
        ev, wishes = pilot.evidence, self.wishes
        advice = decide(
            ev,
            items=self.cursor.remaining(),
            workers=wishes.workers,
            chunksize=wishes.chunksize,
            timeout=wishes.timeout,
            inner_threads=wishes.inner_threads,
            observed=self.observed,
            max_concurrency=wishes.max_concurrency,
            max_rate=None if wishes.pacer is None else wishes.pacer.rate,
        )
        climb, workers = _limit(ev, advice, wishes, is_async=self.is_async)
        plan = wishes.plan(
            advice.model,
            is_async=self.is_async,
            workers=max(workers, advice.workers),
            chunksize=advice.chunksize,
            adaptive=True,
            length=self.cursor.remaining(),
        )
        self.advice = advice
        _log.decided(advice, start=self.cursor.taken, most=plan.workers, again=self._again)
        self.decisions.append(advice)
        if self.on_decide is not None:
            self.on_decide(advice, plan)
        # A re-decision's probe needs not pickle the function again.
        self.fn_bytes = self.fn_bytes or pilot.readings.fn_bytes
        setup = _backends.Setup(
            self.fn,
            plan.workers,
            self.is_async,
            plan.timeout,
            self.fn_bytes,
            climb=climb,
            fresh=wishes.fresh_workers,
            inner_threads=wishes.inner_threads,
            **wishes.workers_setup(),
        )
        return plan, setup

    def legs(self) -> Generator[Phase, None, None]:
        """The run's phases in order: the probe's, then the rest on the chosen model.

        While the rest runs, its pace is watched: if items come 5x slower or faster than the
        decision predicted (see :class:`_Watch`), the rest is fed no more, finishes what it
        holds, and the next items are probed afresh and decided again, at most
        :data:`MAX_REDECISIONS` times in a run. Each phase is yielded once the one before it
        has run to the end.
        """
        redecisions = 0
        while True:
            yield from self._probe()
            rest = self.rest()
            if rest is None:
                return
            plan, setup = rest
            assert self.advice is not None
            start = self.cursor.taken
            if redecisions == MAX_REDECISIONS or self.advice.pace < WATCH_MIN_PACE:
                # Unwatched: out of re-decisions, or items of a few µs (watching costs a third).
                self.watching = None
                yield Phase("run", plan, setup, self.cursor.rest(), start)
                return
            self.watching = watch = _Watch(self.advice.pace)
            yield Phase("run", plan, setup, self.cursor.gate(watch.steady), start)
            self.watching = None
            if self.cursor.exhausted or watch.drift is None:
                return
            self._drifted(plan.model, watch)
            redecisions += 1
            self.pilot = self._new_pilot()

    def _probe(self) -> Generator[Phase, None, None]:
        phases = self.pilot.phases()
        began = time.perf_counter()
        try:
            yield from phases
        finally:
            phases.close()
            self.probe_seconds += time.perf_counter() - began

    def _drifted(self, model: str, watch: _Watch) -> None:
        """Note why the next decision is made again, and what ``model`` was seen to do."""
        self._again = watch.why(model)
        if watch.drift == "slower" and watch.pace is not None:
            # What the model really did is evidence the probe cannot see (workers' native
            # threads fighting for the cores, a server that slows down under load).
            self.observed[model] = max(self.observed.get(model, 0.0), watch.pace)

    def saw(self, phase: Phase, done: Done | Block, busy: float) -> None:
        """``done`` came out of ``phase``, after the run had control for ``busy`` seconds."""
        if phase.name != "run":
            assert type(done) is Done
            self.pilot.saw(done)
        elif self.watching is not None:
            self.watching.saw(busy, len(done.values) if type(done) is Block else 1)

    def dones(
        self, cancel: threading.Event | None = None, *, blocks: bool = False
    ) -> Generator[Done | Block, None, None]:
        """Every item's :class:`Done`: the probe's phases, then the rest on the chosen model.

        ``blocks``: for the rest, :class:`Block` for runs of results, as ``drive`` hands out.
        """
        legs = self.legs()
        try:
            for phase in legs:
                yield from _run(self, phase, cancel, blocks=blocks and phase.name == "run")
        finally:
            legs.close()

    async def adones(self) -> AsyncGenerator[Done | Block, None]:
        """:meth:`dones` for ``amap``: the probe and the models that run on a loop use the
        caller's own; the others run in a thread, each phase's results handed over whole.

        Each phase is closed here, not by the loop's finalizer later: a run that stops early
        stops its tasks before the probe's watcher."""
        legs = self.legs()
        try:
            for phase in legs:
                async with contextlib.aclosing(_arun(self, phase)) as dones:
                    async for done in dones:
                        yield done
        finally:
            legs.close()


def _limit(
    ev: Evidence, advice: Advice, wishes: Wishes, *, is_async: bool
) -> tuple[_backends.Climb | None, int]:
    """(how the count of calls in flight climbs, None if it is fixed; the most workers) for the
    rest.

    Threads start at the advised count and climb, unless the caller fixed the count.
    Calls that wait follow their latency and failures (a far side's capacity), from
    :data:`RAMP_START` up to :data:`CLIMB_CAP`; others climb by throughput, up to twice
    the count. Coroutines that wait follow their latency and failures the same way, on the
    loop. (Under a rate, what is sent starts at once: the workers hold the pace's calls.)
    """
    waits = ev.cpu_share < WAITING_SHARE
    climbs = _backends.traits(advice.model).climbs
    climbing = (
        wishes.workers is None
        and wishes.pacer is None
        and (climbs == "calls" or (climbs == "coroutines" and is_async and waits))
    )
    if not climbing:
        return None, advice.workers
    cap = min(CLIMB_CAP, wishes.max_concurrency or CLIMB_CAP)
    if not waits:
        return _backends.Climb(advice.workers), min(cap, 2 * advice.workers)
    # Coroutines the probe ran together without blocking their loop overlapped at the
    # no-load latency: that many at once are known to be clean, a start for the limit.
    blocked = ev.loop_blocked
    clean = ev.coroutines if blocked is not None and blocked < LOOP_BLOCKED else 0
    workers = cap if climbs == "calls" else max(cap, advice.workers)
    return _backends.Climb(min(cap, max(RAMP_START, clean)), ev.wall), workers


def _run(
    auto: AutoRun, phase: Phase, cancel: threading.Event | None, *, blocks: bool
) -> Generator[Done | Block, None, None]:
    """``phase`` run through ``drive``, each item told to ``auto``."""
    dones = drive(
        phase.items,
        phase.plan,
        phase.setup,
        _backends.load(phase.plan.model),
        cancel=cancel,
        start=phase.start,
        blocks=blocks,
    )
    if phase.name == "run" and auto.watching is None:
        # Unwatched: nothing to tell, and items of a few microseconds would pay for it.
        yield from dones
        return
    resumed = time.perf_counter()
    for done in dones:
        auto.saw(phase, done, time.perf_counter() - resumed)
        yield done
        resumed = time.perf_counter()


async def _arun(auto: AutoRun, phase: Phase) -> AsyncGenerator[Done | Block, None]:
    """:func:`_run` for ``amap``: on the caller's loop, or in a thread for a model that is not
    run on one (its results are handed over whole)."""
    from ._aio import adrive

    blocks = phase.name == "run"
    if blocks and not _backends.traits(phase.plan.model).on_loop:
        ran = await in_thread(lambda cancel: list(_run(auto, phase, cancel, blocks=True)))
        for done in ran:
            yield done
        return
    resumed = time.perf_counter()
    dones = adrive(phase.items, phase.plan, phase.setup, start=phase.start, blocks=blocks)
    async with contextlib.aclosing(dones):
        async for done in dones:
            auto.saw(phase, done, time.perf_counter() - resumed)
            yield done
            resumed = time.perf_counter()


# How long a cancelled ``amap`` waits for its run to wind down (threads get a second to return,
# processes are terminated) before it lets the cancellation through and leaves the rest to
# finish in the background.
CANCEL_WAIT: Final = 1.0


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
        raise
    except BaseException:
        if future.done():
            thread.join()  # (as below: it settled the future with the run's error, its last act)
        raise
    # The thread settled the future as its last act: it is ending now. Joined, it is gone when
    # amap returns, as a run's threads should be.
    thread.join()
    return result


def advise(fn: Callable[[Any], Any], items: Iterable[Any], *, budget: float = 1.0) -> Advice:
    """Measure ``fn`` on the first few items and advise which model to run the batch on.

    ``fn`` is called on real items, as :func:`pickpool.map` would call it (mind side effects):
    first one at a time, timing wall and CPU time while a watcher thread measures how much of
    the time the GIL is held; then several at once, in threads (or, for an ``async def``
    function, as coroutines on one loop) to see how throughput scales. It also times pickling
    the function, the items and the results. A cost model then predicts each model's seconds
    for the whole batch (``len(items)`` items, or 1,000 if the length is unknown); the advice
    is the fastest, sized, with its reasons. From an iterator, the probed items are consumed.

    Args:
        fn: the function to measure, plain or ``async def``.
        items: the batch, or a sample of it.
        budget: about how many seconds the measuring may take (a few calls at least).

    Raises:
        ValueError: ``items`` is empty, ``budget`` is not a positive number, or every
            probed call failed (the first failure is chained).

    Example::

        >>> advice = pickpool.advise(lab.crunch, range(100))
        >>> print(advice)
        Use model='processes' with workers=2, chunksize=1 (CPU-bound, holding the GIL).
          - Each call took 23.4 ms alone, 100% of it on the CPU.
          ...
    """
    check_fn(fn)
    seconds = positive_seconds("budget", budget)
    assert seconds is not None
    try:
        source = iter(items)
    except TypeError:
        raise TypeError(
            f"items must be an iterable (a list, a generator...), not {type(items).__name__}"
        ) from None
    length = length_hint(items)
    pilot = Pilot(
        fn,
        Cursor(source, length),
        is_async=is_async_callable(fn),
        budget=seconds,
        share=ADVISE_SHARE,
        wishes=Wishes(on_error="collect"),
    )
    first_failure: BaseException | None = None
    for phase in pilot.phases():
        for done in drive(
            phase.items,
            phase.plan,
            phase.setup,
            _backends.load(phase.plan.model),
            start=phase.start,
        ):
            pilot.saw(done)
            if done.status != OK and first_failure is None:
                first_failure = done.value
    evidence = pilot.evidence
    assert evidence is not None
    if evidence.calls == 0 and first_failure is None:
        raise ValueError("advise needs at least one item to measure, and items was empty")
    if evidence.failed >= max(1, evidence.calls):
        raise ValueError(
            f"every probed call failed ({evidence.failed} of {evidence.failed}), so there is "
            f"nothing to measure; the first failure: {first_failure!r}"
        ) from first_failure
    return decide(evidence, items=length)
