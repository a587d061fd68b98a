"""``model="auto"``: probe the first items, decide, run the rest, watch, decide again.

Auto runs the probe's phases (``_probe.Pilot``) through the ordinary loop, handing their
results on as they come, then asks the cost model (``_advise.decide``) for the fastest model
for the items left, and runs those on it, numbered on from where the probe stopped. Every item
is run exactly once, in one of the phases; order and error handling are those of any run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import Any, Final

from . import _backends, _log
from ._advise import Advice, decide
from ._bridge import in_thread
from ._costs import LOOP_BLOCKED
from ._cursor import Cursor, Source
from ._driver import drive
from ._options import Options
from ._plan import Plan
from ._probe import WAITING_SHARE, Phase, Pilot
from ._readings import Evidence
from ._results import Leg
from ._schedule import Block, Done
from ._text import format_seconds
from ._timing import ProcessDemand

# Auto probes at most about this long, and for at most this share of the batch's serial time
# (beyond a few calls); ``advise``'s default budget is the same second.
AUTO_BUDGET: Final = 1.0
AUTO_SHARE: Final = 0.015
# Drift: the pace auto re-decides at (5x off the prediction, either way), how long it watches
# before judging, and how often it may re-decide in one run.
DRIFT: Final = 5.0
DRIFT_WATCH: Final = 0.5
MAX_REDECISIONS: Final = 3
# Calls that wait are re-decided on a drift only while this process computes at least this
# many cores' worth: a far side's pace is the limiter's to follow, and no model changes it.
COMPUTING: Final = 0.5
# Items predicted faster than this are not watched: timing them would cost a third of each.
WATCH_MIN_PACE: Final = 20e-6
# A switch of model after a drift must be predicted to save this share of staying on it.
SWITCH_SAVING: Final = 0.2
# The most threads auto's hill climbing may reach.
CLIMB_CAP: Final = 128
# Calls that wait start this many at once; the limiter's slow start takes them up from there.
RAMP_START: Final = 8


class _Watch:
    """Watches the chosen model's pace against the prediction.

    The pace is the time the run had control (not the time the consumer of ``imap`` spent
    between items) per item handed out, over a window of at least :data:`DRIFT_WATCH` seconds
    and 10 items. When it is :data:`DRIFT` times slower or faster than predicted in two windows
    in a row, :attr:`drift` says which, and the run's gate hands out no more items, so the run
    winds down: one window can be one big item among small ones (skewed sizes), which is not
    a change of pace. Faster is only judged when the consumer is not what sets the pace.

    For calls that ``wait`` (on a server, a database, an API), a change of pace is their far
    side's: the limiter follows it, keeping what it learnt (a ceiling, a drop point), and a
    re-decision would throw that away for a model no better placed. Their drift counts only
    in a window where this process computed :data:`COMPUTING` cores' worth or more
    (``cpu_clock``: the process's CPU time, and on a busy machine the time its threads
    waited for a core to compute on): the calls started computing.
    """

    def __init__(
        self,
        predicted: float,
        *,
        waits: bool = False,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        self._predicted = predicted
        self._waits = waits
        # (Read only for calls that wait: it reads every thread's counts.)
        self._cpu_clock = cpu_clock or ProcessDemand()
        self._cpu_began = self._cpu_clock() if waits else 0.0
        self._min_items = 10  # and a few items, so that one slow item is not a drift
        self._began = time.perf_counter()
        self._busy = 0.0
        self._count = 0
        self.drift: str | None = None
        self.pace: float | None = None  # seconds per item over the windows that drifted
        self._suspect: tuple[str, float] | None = None  # the last window's drift, and pace

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
        seen: str | None = None
        if pace > DRIFT * self._predicted:
            seen = "slower"
        elif pace * DRIFT < self._predicted and self._busy > 0.5 * elapsed:
            seen = "faster"
        if seen is not None and self._waits:
            computed = (self._cpu_clock() - self._cpu_began) / max(elapsed, 1e-9)
            if computed < COMPUTING:
                seen = None  # (the far side's pace)
        suspect, self._suspect = self._suspect, None if seen is None else (seen, pace)
        if seen is not None and suspect is not None and suspect[0] == seen:
            # (The gentler of the two windows' paces: the one a big item weighs on less.)
            self.drift = seen
            self.pace = min(pace, suspect[1]) if seen == "slower" else max(pace, suspect[1])
        # A new window: what counts is the recent pace, not the average since the start.
        self._busy, self._count, self._began = 0.0, 0, time.perf_counter()
        if self._waits:
            self._cpu_began = self._cpu_clock()

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
        source: Iterable[Any] | Source,
        *,
        is_async: bool,
        length: int | None,
        options: Options,
    ) -> None:
        self.fn, self.is_async, self.options = fn, is_async, options
        self.cursor = Cursor(source, length)
        self.fn_bytes: bytes | None = None  # pickled for processes once, by the first probe
        self.probe_seconds = 0.0  # in the probe's phases, consumer included (for benchmarks)
        self.pilot = self._new_pilot()
        self.advice: Advice | None = None
        self.decisions: list[Advice] = []  # the first, then one per re-decision after a drift
        # Seconds per item a model was seen to take when it drifted slower than predicted.
        self.observed: dict[str, float] = {}
        self.again: str | None = None  # why the next decision is a re-decision
        self.pace_seen: float | None = None  # seconds per item the model that drifted took
        # The models it may choose (None: any). An async def under amap runs on the caller's
        # loop, where what its coroutines hold (a client session) belongs: see adones.
        self.choices: tuple[str, ...] | None = None
        self.watching: _Watch | None = None  # the rest's, while it runs watched
        # Told each decision and the plan it runs on (the caller's Report).
        self.on_decide: Callable[[Advice, Plan], None] | None = None
        self.report_legs: list[Leg] = []  # each phase as it runs, for the caller's Report

    def _new_pilot(self) -> Pilot:
        pilot = Pilot(
            self.fn,
            self.cursor,
            is_async=self.is_async,
            budget=AUTO_BUDGET,
            share=AUTO_SHARE,
            options=self.options,
            ramp=False,
        )
        pilot.readings.fn_bytes = self.fn_bytes
        return pilot

    def rest(self) -> tuple[Plan, _backends.Setup] | None:
        """After the probe: the plan for the items left, or None if there are none."""
        pilot = self.pilot
        if self.cursor.exhausted or pilot.evidence is None:
            return None
        ev, options = pilot.evidence, self.options
        advice = decide(
            ev,
            items=self.cursor.remaining(),
            options=options,
            observed=self.observed,
            choices=self.choices,
        )
        advice = _worth_switching(self, ev, advice)
        climb, workers = _limit(ev, advice, options, is_async=self.is_async)
        plan = options.plan(
            advice.model,
            is_async=self.is_async,
            workers=max(workers, advice.workers),
            chunksize=advice.chunksize,
            length=self.cursor.remaining(),
        )
        self.advice = advice
        _log.decided(advice, start=self.cursor.taken, most=plan.workers, again=self.again)
        self.decisions.append(advice)
        if self.on_decide is not None:
            self.on_decide(advice, plan)
        # A re-decision's probe needs not pickle the function again.
        self.fn_bytes = self.fn_bytes or pilot.readings.fn_bytes
        fn_bytes = self.fn_bytes if _backends.traits(plan.model).pickles else None
        setup = options.setup(self.fn, plan, is_async=self.is_async, fn_bytes=fn_bytes, climb=climb)
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
            waits = self.advice.evidence.demand_share < WAITING_SHARE
            self.watching = watch = _Watch(self.advice.pace, waits=waits)
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
        self.again = watch.why(model)
        self.pace_seen = watch.pace
        if watch.drift == "slower" and watch.pace is not None:
            # What the model really did is evidence the probe cannot see (workers' native
            # threads fighting for the cores, a server that slows down under load).
            self.observed[model] = max(self.observed.get(model, 0.0), watch.pace)

    def saw(self, phase: Phase, done: Done | Block, busy: float) -> None:
        """``done`` came out of ``phase``, after the run had control for ``busy`` seconds."""
        if phase.name != "run":
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
                yield from _run(
                    self, phase, cancel, blocks=blocks and (phase.name == "run" or phase.blocks)
                )
        finally:
            legs.close()

    async def adones(self) -> AsyncGenerator[Done | Block, None]:
        """:meth:`dones` for ``amap``: the probe and the models that run on a loop use the
        caller's own; the others run in a thread, each phase's results handed over whole.

        Each phase is closed here, not by the loop's finalizer later: a run that stops early
        stops its tasks before the probe's watcher. An ``async def`` runs as tasks of the
        caller's loop whatever the probe finds: its coroutines may hold what that loop owns."""
        on_loop = tuple(m for m in _backends.names() if _backends.model(m).loop_runner)
        fits = self.options.models()
        if self.is_async and (fits is None or set(on_loop) & set(fits)):
            self.choices = on_loop
        legs = self.legs()
        try:
            for phase in legs:
                async with contextlib.aclosing(_arun(self, phase)) as dones:
                    async for done in dones:
                        yield done
        finally:
            legs.close()


def _limit(
    ev: Evidence, advice: Advice, options: Options, *, is_async: bool
) -> tuple[_backends.Climb | None, int]:
    """(how the count of calls in flight climbs, None if it is fixed; the most workers) for the
    rest.

    Threads start at the advised count and climb, unless the caller fixed the count.
    Calls that wait (their child processes' CPU counted as theirs) follow their latency and
    failures (a far side's capacity), from :data:`RAMP_START` up to :data:`CLIMB_CAP`;
    others climb by throughput, up to twice the count. Coroutines that wait follow their
    latency and failures the same way, on the loop. (Under a rate, what is sent starts at
    once: the workers hold the pace's calls.)
    """
    # (Calls that wait for child processes computing on these cores do not wait on a far
    # side: their count climbs by throughput.)
    waits = ev.demand_share < WAITING_SHARE
    climbs = _backends.traits(advice.model).climbs
    climbing = (
        options.workers is None
        and options.pacer is None
        and (climbs == "calls" or (climbs == "coroutines" and is_async and waits))
    )
    if not climbing:
        return None, advice.workers
    cap = min(CLIMB_CAP, options.max_concurrency or CLIMB_CAP)
    if not waits:
        return _backends.Climb(advice.workers), min(cap, 2 * advice.workers)
    # Coroutines the probe ran together without blocking their loop overlapped at the
    # no-load latency: that many at once are known to be clean, a start for the limit.
    blocked = ev.loop_blocked
    clean = ev.coroutines if blocked is not None and blocked < LOOP_BLOCKED else 0
    workers = cap if climbs == "calls" else max(cap, advice.workers)
    return _backends.Climb(min(cap, max(RAMP_START, clean)), ev.wall), workers


def _worth_switching(auto: AutoRun, ev: Evidence, advice: Advice) -> Advice:
    """``advice`` after a drift, if switching to its model pays; else the model that ran.

    A switch costs new workers and what the old ones held (imports, caches, connections), and
    the new model's prediction is the one that may be as wrong as the old one's was: it must
    save :data:`SWITCH_SAVING` of what staying costs (its prediction for the items left, no
    better than the pace it was seen to keep; after a faster drift, that pace). Calls that
    wait never switch on a slower pace: that is the far side's (a server under load, a
    quota), which no model changes, unless the new probe sees them compute.
    """
    if not auto.decisions or auto.pace_seen is None:
        return advice
    ran = auto.decisions[-1].model
    if advice.model == ran or ran not in advice.predicted:
        return advice
    seen = auto.pace_seen * advice.items
    stay = max(seen, advice.predicted[ran]) if ran in auto.observed else seen
    go = advice.predicted[advice.model]
    waits = ev.cpu_share < WAITING_SHARE and auto.decisions[-1].evidence.cpu_share < WAITING_SHARE
    if not waits and go < (1 - SWITCH_SAVING) * stay:
        return advice
    kept = decide(
        ev,
        items=auto.cursor.remaining(),
        options=auto.options,
        observed=auto.observed,
        choices=(ran,),
    )
    why = (
        f"Kept {ran}: the calls wait, so a slower pace is their far side's, which {advice.model} "
        "would not change."
        if waits
        else f"Kept {ran}: {advice.model} was predicted {format_seconds(go)} for the items left "
        f"against {format_seconds(stay)} staying; a switch must save a fifth."
    )
    return dataclasses.replace(kept, reasons=(*kept.reasons, why))


def _leg(auto: AutoRun, phase: Phase) -> Leg:
    """A new :class:`Leg` of the report, for ``phase``."""
    probe = phase.name != "run"
    if probe:
        why = f"auto's probe: calls {phase.name}"
    elif auto.again:
        why = f"auto decided again: {auto.again}"
    else:
        why = f"auto decided: {auto.advice.kind if auto.advice else 'no evidence'}"
    leg = Leg(phase.plan.model, why=why, probe=probe)
    auto.report_legs.append(leg)
    return leg


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
        leg=_leg(auto, phase),
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

    blocks = phase.name == "run" or phase.blocks
    if _backends.model(phase.plan.model).loop_runner is None:
        ran = await in_thread(lambda cancel: list(_run(auto, phase, cancel, blocks=blocks)))
        for done in ran:
            yield done
        return
    resumed = time.perf_counter()
    dones = adrive(
        phase.items,
        phase.plan,
        phase.setup,
        start=phase.start,
        blocks=blocks,
        leg=_leg(auto, phase),
    )
    async with contextlib.aclosing(dones):
        async for done in dones:
            auto.saw(phase, done, time.perf_counter() - resumed)
            yield done
            resumed = time.perf_counter()
