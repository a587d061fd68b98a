"""From evidence to advice: :func:`decide`, and :func:`advise`, which measures first.

:func:`decide` asks every registered model for its predicted seconds on the batch (each
model's ``predict``, reading the shared :class:`~pickpool._costs.Costs`), picks the fastest
(or a simpler one within a near tie), names the kind of work, and says why
(``_reasons``). It is a pure function of the evidence and the machine's facts: property
tests drive it with made-up evidence. :func:`advise` runs the probe's phases on the caller's
first items (``_probe.Pilot``, through the ordinary loop) and decides.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import _backends, _machine, _reasons
from ._costs import TIE, Costs, Option, gil_share
from ._cursor import Cursor
from ._driver import drive
from ._machine import Machine
from ._options import Options, Require, check, check_fn, length_hint, positive_seconds
from ._probe import ADVISE_SHARE, Pilot
from ._readings import Evidence
from ._schedule import Done
from ._task import OK, is_async_callable
from ._text import format_seconds, plural

Kind = Literal["cpu", "cpu-nogil", "blocking-io", "async-io", "tiny", "mixed"]

# Predictions for an input of unknown length are for this many items.
UNKNOWN_LENGTH: Final = 1000
# A call shorter than this, where a plain loop wins, is "tiny" work.
TINY: Final = 1e-3


@dataclass(frozen=True)
class Advice:
    """Which model to run a batch on, with how many workers and chunks, and why.

    ``model``, ``workers`` and ``chunksize`` are what to pass to :func:`pickpool.map`
    (:attr:`options` holds them as keyword arguments). ``kind`` names the work:
    ``"cpu"`` (holds the GIL), ``"cpu-nogil"`` (C code that releases it), ``"blocking-io"``,
    ``"async-io"``, ``"tiny"`` (too short for parallelism to pay) or ``"mixed"``.
    ``predicted`` maps each model to its predicted seconds for :attr:`items` items (``sizes``,
    to the workers and chunk size each prediction assumed; ``pace``, the advised model's
    seconds per item once running), ``evidence`` holds the measurements, ``reasons`` says why
    in sentences.

    Example::

        >>> advice = pickpool.advise(crunch, range(200))
        >>> advice.model, advice.kind
        ('processes', 'cpu')
        >>> pickpool.map(crunch, range(200), **advice.options)
    """

    model: str
    workers: int
    chunksize: int
    kind: Kind
    evidence: Evidence
    predicted: Mapping[str, float]
    reasons: tuple[str, ...]
    items: int
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    pace: float = field(default=0.0, repr=False)  # predicted seconds per item once running
    # Threads per native pool (BLAS, OpenMP...) in each call under the advised model, and
    # under each model (None: the pools as they are).
    inner_threads: int | None = None
    inner: Mapping[str, int | None] = field(default_factory=dict, repr=False)

    @property
    def options(self) -> dict[str, Any]:
        """``model``, ``workers``, ``chunksize`` (and a cap on native thread pools, if the
        advice caps them) as keyword arguments for ``map``."""
        options: dict[str, Any] = {
            "model": self.model,
            "workers": self.workers,
            "chunksize": self.chunksize,
        }
        if self.inner_threads is not None:
            options["inner_threads"] = self.inner_threads
        return options

    def __str__(self) -> str:
        kind = _KIND_TEXT[self.kind]
        if self.kind == "cpu-nogil" and not _machine.gil_enabled():
            kind = "CPU-bound, and this interpreter runs without the GIL"
        lines = [
            f"Use model={self.model!r} with workers={self.workers}, chunksize={self.chunksize}"
            f" ({kind})."
        ]
        lines += [f"  - {reason}" for reason in self.reasons]
        lines.append(f"  Predicted for {self.items:,} items:")
        width = max(10, *(len(model) for model in self.predicted))
        for model, seconds in sorted(self.predicted.items(), key=lambda kv: kv[1]):
            workers, chunk = self.sizes.get(model, (0, 0))
            sizing = f"{plural(workers, 'worker')}, chunks of {chunk}" if workers else ""
            inner = self.inner.get(model)
            if inner is not None and self.evidence.pools:
                sizing += f", {plural(inner, 'thread')} per native pool"
            mark = "  <- advised" if model == self.model else ""
            lines.append(f"    {model:<{width}} {format_seconds(seconds):>10}   {sizing}{mark}")
        return "\n".join(lines)


_KIND_TEXT: Final[dict[str, str]] = {
    "cpu": "CPU-bound, holding the GIL",
    "cpu-nogil": "CPU-bound in code that releases the GIL",
    "blocking-io": "mostly blocking waits",
    "async-io": "coroutines that mostly await",
    "tiny": "calls too short for parallelism to pay",
    "mixed": "a mix of computing and waiting",
}


def here() -> Machine:
    """This machine, with what each registered model observes of it for its prediction."""
    facts: dict[str, object] = {}
    for name in _backends.names():
        observe = _backends.model(name).observe
        if observe is not None:
            facts[name] = observe()
    return Machine(cores=_machine.cores(), gil=_machine.gil_enabled(), facts=facts)


def choose(options: Mapping[str, Option], *, is_async: bool) -> Option:
    """The simplest option (the lowest rank) that no less simple one beats by more than
    :data:`TIE`: a model has to be worth what it adds. (Simplest within a tie of the fastest
    alone is not enough: GIL-bound work predicted at loop 265 ms, threads 259, processes 252
    went to threads, which cannot beat the loop on it; now processes.)"""
    side = 1 if is_async else 0
    pick: Option | None = None
    for name in sorted(options, key=lambda m: _backends.traits(m).rank[side]):
        option = options[name]
        if pick is None or option.seconds * TIE < pick.seconds:
            pick = option
    assert pick is not None
    return pick


def awaits(ev: Evidence) -> bool:
    """Coroutines that mostly wait and leave their loop free while they do (async I/O)."""
    blocked = ev.loop_blocked
    return ev.is_async and ev.cpu_share < 0.5 and (blocked is None or blocked < 0.5)


def classify(ev: Evidence, machine: Machine, chosen: Option) -> Kind:
    """The kind of work, from the evidence (and, for ``"tiny"``, from what won)."""
    share = ev.cpu_share
    if awaits(ev):
        return "async-io"
    if (
        _backends.traits(chosen.model).inline
        and ev.wall < TINY
        and ev.item_pickle + ev.result_pickle < max(ev.wall, 20e-6)
    ):
        return "tiny"  # (when pickling is what rules processes out, the work is not tiny)
    if share >= 0.7:
        return "cpu" if gil_share(ev, machine) >= 0.5 else "cpu-nogil"
    if share <= 0.3:
        return "blocking-io"
    return "mixed"


def _paced(option: Option, rate: float, wall: float, n: int) -> Option:
    """``option`` with no more than ``rate`` calls starting a second: no faster than ``n /
    rate`` in all, and no more workers than keep that pace (Little's law, with room for
    calls that take longer than the probe's)."""
    if math.isinf(option.seconds):
        return option
    per_item = max(option.per_item, 1.0 / rate)
    workers = min(option.workers, max(1, math.ceil(1.5 * rate * wall)))
    return dataclasses.replace(
        option,
        seconds=max(option.seconds, n / rate),
        per_item=per_item,
        workers=workers,
        chunksize=1,
    )


def _seen(
    options: dict[str, Option], observed: Mapping[str, float], n: int, *, is_async: bool
) -> None:
    """No prediction better than what a model was seen to do in this very run: a model that
    ran slower than predicted, ``observed`` seconds per item."""
    seen = dict(observed)
    if not is_async:
        # A plain function's calls run on this process's threads under several models: what
        # one of them was seen to do (the GIL, native pools fighting for the cores, a slowing
        # server), the others would do too.
        same = [m for m in options if _backends.traits(m).plain_on_threads]
        for name in same:
            seen[name] = max(seen.get(other, 0.0) for other in same)
    for name, pace in seen.items():
        option = options.get(name)
        if option is not None and pace > option.per_item:
            options[name] = dataclasses.replace(
                option, seconds=option.seconds + n * (pace - option.per_item), per_item=pace
            )


def _narrowed(
    options: Options,
    choices: Collection[str] | None,
    allowed: Mapping[str, Option],
    predictions: Mapping[str, Option],
) -> list[str]:
    """Sentences for what kept a faster model out of the choice, if anything did."""
    fastest = min(predictions.values(), key=lambda o: o.seconds).model
    if fastest in allowed or (choices is not None and fastest not in choices):
        return []
    if options.require == "sharedmem" and not _backends.traits(fastest).shares_memory:
        return [
            f"{fastest} was not considered: require='sharedmem' asks for calls that share "
            "this process's memory."
        ]
    if options.initializer is not None and not options.worker_state:
        return [
            f"{fastest} was not considered: with it, the globals initializer= sets would not "
            "be each worker's own; return the state and pass worker_state=True to consider "
            "every model."
        ]
    return [
        f"{fastest} was not considered: these coroutines wait without holding up their "
        "loop, so they run as tasks of one event loop (what they use, a client session, is "
        "bound to it)."
    ]


def decide(
    ev: Evidence,
    *,
    items: int | None,
    options: Options | None = None,
    observed: Mapping[str, float] | None = None,
    machine: Machine | None = None,
    choices: Collection[str] | None = None,
) -> Advice:
    """The :class:`Advice` for running ``items`` more items like the probed ones.

    ``options``: the caller's (their ``workers``, ``chunksize``, ``timeout``, ``max_rate``...
    bind every prediction). ``observed``: seconds per item a model was seen to take in this
    very run, when it ran slower than predicted. ``choices``: the models it may advise
    (default: any); every registered model that predicts is predicted all the same.
    """
    options = options or Options()
    machine = machine or here()
    n = UNKNOWN_LENGTH if items is None else max(1, items)
    costs = Costs(ev, machine, n, options)
    predictions: dict[str, Option] = {}
    for name in _backends.names():
        predict = _backends.model(name).predict
        option = None if predict is None else predict(costs)
        if option is not None:
            predictions[name] = option
    _seen(predictions, observed or {}, n, is_async=ev.is_async)
    if options.max_rate is not None:
        rate = options.max_rate
        predictions = {name: _paced(o, rate, ev.wall, n) for name, o in predictions.items()}
    # What the call means may not depend on the choice: the options narrow it (see
    # Options.models), and so does where it runs (amap's coroutines on the caller's loop).
    fits = options.models()
    allowed = {
        n: o
        for n, o in predictions.items()
        if (choices is None or n in choices) and (fits is None or n in fits)
    }
    if not allowed:
        raise ValueError(f"none of the models {sorted(choices or fits or ())} can run here")
    if ev.is_async and awaits(ev):
        # Coroutines that wait, without holding up their loop, run as tasks of a loop: what
        # they hold (a client session, a connection pool) is bound to one.
        on_loop = {n: o for n, o in allowed.items() if _backends.model(n).loop_runner}
        allowed = on_loop or allowed
    narrowed = _narrowed(options, choices, allowed, predictions)
    chosen = choose(allowed, is_async=ev.is_async)
    kind = classify(ev, machine, chosen)
    said = _reasons.reasons(ev, machine, predictions, chosen, kind, n, items is None, allowed)
    why = [*said, *narrowed]
    return Advice(
        model=chosen.model,
        workers=chosen.workers,
        chunksize=chosen.chunksize,
        kind=kind,
        evidence=ev,
        predicted={name: o.seconds for name, o in predictions.items()},
        reasons=tuple(why),
        items=n,
        sizes={name: (o.workers, o.chunksize) for name, o in predictions.items()},
        pace=chosen.per_item,
        inner_threads=chosen.inner,
        inner={name: o.inner for name, o in predictions.items()},
    )


def advise(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    budget: float = 1.0,
    require: Require = None,
) -> Advice:
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
        require: ``"sharedmem"``: advise only a model whose calls share this process's
            memory (a plain loop, threads, asyncio), as ``map``'s ``require=``.

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
    options = check(on_error="collect", require=require)
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
        options=options,
    )
    first_failure: BaseException | None = None
    for phase in pilot.phases():
        backend = _backends.load(phase.plan.model)
        dones = drive(
            phase.items, phase.plan, phase.setup, backend, start=phase.start, blocks=phase.blocks
        )
        for done in dones:
            pilot.saw(done)
            if type(done) is Done and done.status != OK and first_failure is None:
                first_failure = done.value
    evidence = pilot.evidence
    assert evidence is not None
    taken = pilot.cursor.taken
    if source is items and taken:
        # An iterator (a generator, a file) cannot be read again: what a later map() of it
        # gets is the rest. Said where it happens, once.
        warnings.warn(
            f"advise() consumed the first {taken} items of an iterator: a map() of the same "
            "iterator now starts after them; pass a list, or split it with itertools.tee",
            UserWarning,
            stacklevel=2,
        )
    if evidence.calls == 0 and first_failure is None:
        raise ValueError("advise needs at least one item to measure, and items was empty")
    if evidence.failed >= max(1, evidence.calls):
        raise ValueError(
            f"every probed call failed ({evidence.failed} of {evidence.failed}), so there is "
            f"nothing to measure; the first failure: {first_failure!r}"
        ) from first_failure
    return decide(evidence, items=length, options=options)
