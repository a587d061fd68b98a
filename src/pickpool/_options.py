"""One call's options, checked once where the call enters, and what is derived from them.

:func:`check` checks every option of ``map``, ``imap``, ``amap``, ``starmap``, ``aimap`` (and
of the Executor), the chosen model's pre-flight checks included (an extra or a cluster it
needs), and returns one frozen :class:`Options`; nothing after it checks them again. Every bad
value is reported before anything runs, so bad input costs nothing and loses nothing. From
the record, :meth:`Options.plan` derives the :class:`~pickpool._plan.Plan` of a run, or of one
phase of an auto run, on any model, and :meth:`Options.setup` what its backend starts with.

Adding an option touches :class:`Keywords` (the signatures), :func:`check`, :class:`Options`,
and what reads it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

from . import _chunks, _machine
from ._backends import Climb, ModelName, Setup, names, traits
from ._backends import model as registered
from ._native import InnerThreads, check_inner_threads
from ._pace import Pacer
from ._plan import Plan
from ._progress import wants_progress
from ._task import is_async_callable

Model = Literal["auto", ModelName]
OnError = Literal["raise", "collect", "skip"]
Require = Literal["sharedmem"] | None
Progress = bool | Literal["always"] | Callable[[int], Any] | Any  # Any: a tqdm bar

ON_ERROR: Final = ("raise", "collect", "skip")
# Seconds before a failed item's first retry, unless the caller says otherwise.
DEFAULT_BACKOFF: Final = 0.05
# Each worker may have this many chunks' worth of items in flight or waiting to be handed out.
WINDOW_CHUNKS_PER_WORKER: Final = 4


class _SharedKeywords(TypedDict, total=False):
    """The options every overload of ``map``, ``imap``, ``amap``, ``starmap`` and ``aimap``
    takes alike, ``model`` aside (``**options: Unpack[Keywords]``).

    ``on_error``, ``report`` and ``worker_state`` are not here: their values pick the overload
    (the result type, the function's arguments), so the overloads spell them out. The
    implementations list every option, with its default.
    """

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
    require: Require


class NotAModel:
    """No value is one: see :class:`Keywords`."""


class Keywords(_SharedKeywords, total=False):
    """The options of the overloads for plain functions.

    ``Sequence[NotAModel]`` admits no string, no model name and nothing a user would pass: it
    is there for mypy, which blames a misspelt ``model="thread"`` on that one argument, in
    one line, only when some overload's arguments are "shaped" like the call's (``str`` is
    a ``Sequence``); a union of literals alone is not, and mypy then prints every overload,
    some 10 kB for ``map``. The overloads for coroutine functions keep the plain
    :data:`Model`, so that a misspelt model in a plain function's call is not blamed on an
    ``async def`` overload (it is an error there too).
    """

    model: Model | Sequence[NotAModel]


class AsyncKeywords(_SharedKeywords, total=False):
    """The options of the overloads for ``async def`` functions: see :class:`Keywords`."""

    model: Model


# Every keyword :func:`check` takes. (``worker_state`` changes ``fn``'s signature, so the
# overloads spell it out too: ``fn(state, item)``.)
KEYWORDS: Final = frozenset(Keywords.__optional_keys__ | {"on_error", "worker_state"})


def all_models() -> tuple[str, ...]:
    """What ``model=`` may be: ``"auto"`` and every registered model."""
    return ("auto", *names())


def default_workers(model: str, *, is_async: bool) -> int:
    """Workers when none are given: cores for CPU work, more for threads that wait.

    ``serial``: 1. ``processes``: the usable cores (affinity and cgroup quota). ``threads``:
    8 per usable core, at most 64. ``asyncio``: 1024 concurrent coroutines for an async
    function; for a plain function, the thread count of ``threads``.
    """
    return traits(model).default_workers(_machine.cores(), is_async)


@dataclass(frozen=True, slots=True)
class Options:
    """One call's options, checked (see :func:`check`): what every run and phase honours.

    Example::

        >>> options = check(model="threads", workers=4)
        >>> options.plan("threads", is_async=False).workers
        4
    """

    model: str = "auto"
    workers: int | None = None
    max_concurrency: int | None = None
    # ``max_rate``, as the one pacer every phase of the run shares.
    pacer: Pacer | None = None
    chunksize: int | None = None
    ordered: bool = True
    timeout: float | None = None
    retries: int = 0
    backoff: float = DEFAULT_BACKOFF
    on_error: str = "raise"
    progress: object = None  # None (no progress), "bar", "lines", or the caller's hook
    client: Any = None
    fresh_workers: bool = False
    inner_threads: InnerThreads = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    # The initializer's return value is each worker's state, handed to fn (see _state).
    worker_state: bool = False
    max_tasks_per_child: int | None = None
    # "sharedmem": calls must share the caller's memory (what they write, the caller sees).
    require: Require = None
    # How worker processes start, if not pickpool's choice (an Executor's ``mp_context``).
    start_method: str | None = None
    # What worker threads are named while they serve the run (an Executor's
    # ``thread_name_prefix``: "prefix_0", "prefix_1"...); None: pickpool's own name.
    thread_name_prefix: str | None = None

    @property
    def max_rate(self) -> float | None:
        """Calls a second at most, if the caller set ``max_rate``."""
        return None if self.pacer is None else self.pacer.rate

    @property
    def one_by_one(self) -> bool:
        """Each item goes alone: its timeout runs from its start, its start is paced."""
        return _chunks.one_by_one(timeout=self.timeout, rate=self.max_rate)

    def models(self) -> tuple[str, ...] | None:
        """The models auto (and the Executor's auto) may choose under these options, or None
        for any: what a call means must not depend on auto's choice.

        ``require="sharedmem"``: those whose calls share the caller's memory. A plain
        ``initializer`` (it sets globals, not ``worker_state``): those where a global is one
        worker's own, not one for all the threads of a pool.
        """
        if self.require is None and (self.initializer is None or self.worker_state):
            return None
        allowed = names()
        if self.require == "sharedmem":
            allowed = tuple(m for m in allowed if traits(m).shares_memory)
        if self.initializer is not None and not self.worker_state:
            allowed = tuple(m for m in allowed if traits(m).worker_globals)
        return allowed

    def bind(self, fn: Callable[..., Any]) -> Callable[[Any], Any]:
        """``fn`` as every model calls it: under ``worker_state``, handed its worker's state."""
        if not self.worker_state or self.initializer is None:
            return fn
        check_worker_state_fn(fn, self.initializer)
        from ._state import per_worker

        return per_worker(fn, self.initializer, self.initargs)

    def plan(
        self,
        model: str,
        *,
        is_async: bool,
        length: int | None = None,
        workers: int | None = None,
        chunksize: int | None = None,
        adaptive: bool = True,
    ) -> Plan:
        """The plan for running (some of) the items on ``model``, with these options.

        ``workers`` and ``chunksize``: where auto sizes the run (None: the caller's, else the
        model's defaults). ``adaptive``: chunks follow the measured pace, unless the caller
        fixed the chunk size or each item goes alone. ``length``: how many items it runs, if
        known.
        """
        kind = traits(model)
        backend = model
        if self.timeout is not None and kind.with_timeout is not None:
            # The caller's own thread cannot be interrupted: a one-thread pool can abandon it.
            backend = kind.with_timeout
        # serial is one at a time whatever `workers` says, so that switching a call to serial
        # to debug it needs no other change.
        n = (
            1
            if kind.inline
            else workers or self.workers or default_workers(model, is_async=is_async)
        )
        if self.max_concurrency is not None:
            n = min(n, self.max_concurrency)
        runs = traits(backend)
        most = self.max_tasks_per_child if runs.recycles else None
        if self.one_by_one:
            size = 1
        else:
            first = _chunks.first(batched=kind.batched, workers=n, length=length, most=most)
            size = chunksize or self.chunksize or first
            if most is not None:
                size = min(size, most)
        window = size if kind.inline else WINDOW_CHUNKS_PER_WORKER * n * size
        if (runs.silent_starts and self.timeout is not None) or (
            self.pacer is not None and not runs.paces_starts
        ):
            # Their futures do not say when a task starts: with no more in flight than there
            # are workers, none waits in a queue while its timeout runs. Under a rate, what is
            # sent starts at once, so that spacing the sends spaces the starts (a model that
            # paces its own starts is handed them unpaced).
            window = n
        return Plan(
            model=backend,
            workers=n,
            chunksize=size,
            window=window,
            ordered=self.ordered,
            timeout=self.timeout,
            retries=self.retries,
            fail_fast=self.on_error == "raise",
            adaptive=adaptive and not self.one_by_one and self.chunksize is None,
            length=length,
            backoff=self.backoff,
            pacer=None if runs.paces_starts else self.pacer,
            hops=runs.hops,
            inline=runs.inline,
            most_per_chunk=most,
        )

    def setup(
        self,
        fn: Callable[[Any], Any],
        plan: Plan,
        *,
        is_async: bool,
        fn_bytes: bytes | None = None,
        climb: Climb | None = None,
    ) -> Setup:
        """What ``plan``'s backend is started with, to run ``fn``."""
        paces = traits(plan.model).paces_starts
        return Setup(
            fn,
            plan.workers,
            is_async,
            plan.timeout,
            fn_bytes,
            climb=climb,
            client=self.client,
            fresh=self.fresh_workers,
            inner_threads=self.inner_threads,
            max_concurrency=self.max_concurrency,
            # (Under worker_state the function makes its state itself: see bind.)
            initializer=None if self.worker_state else self.initializer,
            initargs=() if self.worker_state else self.initargs,
            max_tasks_per_child=self.max_tasks_per_child,
            pacer=self.pacer if paces else None,
            start_method=self.start_method,
            thread_name_prefix=self.thread_name_prefix,
        )


# (Long on purpose: every option checked, in the order a reader of the signature meets them.)
def check(
    *,
    model: object = "auto",
    workers: object = None,
    max_concurrency: object = None,
    max_rate: object = None,
    chunksize: object = None,
    ordered: object = True,
    timeout: object = None,
    retries: object = 0,
    backoff: object = DEFAULT_BACKOFF,
    on_error: object = "raise",
    progress: object = False,
    client: object = None,
    fresh_workers: object = False,
    inner_threads: object = None,
    initializer: object = None,
    initargs: object = (),
    worker_state: object = False,
    max_tasks_per_child: object = None,
    require: object = None,
) -> Options:
    """Every option of one call checked, with the chosen model's pre-flight checks: the
    :class:`Options` record, or the first ``TypeError``/``ValueError`` (or
    :class:`~pickpool.BackendUnavailable`) that says what is wrong and what to do."""
    name = check_model(model)
    n = positive_int("workers", workers)
    size = positive_int("chunksize", chunksize)
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, not {ordered!r}")
    if on_error not in ON_ERROR:
        raise ValueError(
            f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, not {on_error!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
        raise TypeError(f"retries must be a whole number, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    limit = positive_seconds("timeout", timeout, optional=True)
    wait = 0.0 if backoff == 0 else positive_seconds("backoff", backoff)
    cap = positive_int("max_concurrency", max_concurrency)
    if cap is not None and n is not None and n > cap:
        raise ValueError(f"workers={n} is more than max_concurrency={cap}: pass one or the other")
    if limit is not None and size is not None and size > 1:
        raise ValueError(
            f"timeout applies to each item, so it needs chunksize=1 (got chunksize={size}); "
            "leave chunksize unset"
        )
    rate = positive_rate(max_rate)
    if rate is not None and size is not None and size > 1:
        raise ValueError(
            f"max_rate spaces out each call's start, so it needs chunksize=1 (got "
            f"chunksize={size}); leave chunksize unset"
        )
    if not isinstance(fresh_workers, bool):
        raise TypeError(f"fresh_workers must be True or False, not {fresh_workers!r}")
    inner = check_inner_threads(inner_threads)
    mode = wants_progress(progress)
    init, args, tasks_cap = worker_options(
        name, initializer, initargs, max_tasks_per_child, worker_state=worker_state is True
    )
    if tasks_cap is not None and size is not None and size > tasks_cap:
        raise ValueError(
            f"chunksize={size} is more than max_tasks_per_child={tasks_cap}: a worker is "
            "replaced after that many items, so its chunks cannot be larger"
        )
    state = check_worker_state(worker_state, init)
    needs = check_require(name, require)
    client, n = _prepared(name, client, n)
    return Options(
        model=name,
        workers=n,
        max_concurrency=cap,
        pacer=None if rate is None else Pacer.per_second(rate),
        chunksize=size,
        ordered=ordered,
        timeout=limit,
        retries=int(retries),
        backoff=wait or 0.0,
        on_error=str(on_error),
        progress=mode,
        client=client,
        # State an initializer leaves, or a worker's count of items, belongs to this run: its
        # workers are new, and are not kept for the next. (A worker_state is the run's own.)
        fresh_workers=fresh_workers or (init is not None and not state) or tasks_cap is not None,
        inner_threads=inner,
        initializer=init,
        initargs=args,
        worker_state=state,
        max_tasks_per_child=tasks_cap,
        require=needs,
    )


def from_keywords(where: str, options: Mapping[str, Any]) -> Options:
    """:func:`check` on the keyword arguments a function took as ``**options`` (``where``
    names it, for the error an unknown keyword gets)."""
    unknown = set(options) - KEYWORDS
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    return check(**options)


def check_model(model: object) -> str:
    """``model=`` checked: ``"auto"`` or a registered model's name."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a string such as 'threads', not {type(model).__name__}")
    if model not in all_models():
        raise ValueError(
            f"unknown model {model!r}; use one of {', '.join(map(repr, all_models()))}"
        )
    return model


def _prepared(name: str, client: object, workers: int | None) -> tuple[Any, int | None]:
    """``(client, workers)`` as ``name``'s model takes them, its pre-flight checks passed."""
    spec = None if name == "auto" else traits(name)
    if client is not None and (spec is None or not spec.takes_client):
        clustered = " or ".join(f"model={m!r}" for m in names() if traits(m).takes_client)
        raise ValueError(f"client= is for {clustered}, not model={name!r}")
    if name == "auto":
        return client, workers
    prepare = registered(name).prepare
    if prepare is None:
        return client, workers
    # Here, so that a missing extra or cluster is reported at the call, even by imap.
    client, workers = prepare(client, workers)
    return client, positive_int("workers", workers)


def worker_options(
    model: str,
    initializer: object,
    initargs: object,
    max_tasks_per_child: object,
    *,
    worker_state: bool = False,
) -> tuple[Callable[..., object] | None, tuple[Any, ...], int | None]:
    """``initializer``, ``initargs`` and ``max_tasks_per_child`` checked for ``model`` (under
    ``worker_state`` the function makes its state itself: every model takes it)."""
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
    if not isinstance(initargs, tuple | list):
        raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
    concrete = model != "auto"
    if initializer is not None and concrete and not traits(model).initializer and not worker_state:
        raise ValueError(
            f"initializer is not supported under model={model!r}: have it return each "
            "worker's state and pass worker_state=True (fn then takes it first), set up each "
            "worker another way (a dask WorkerPlugin), or use model='processes' or 'threads'"
        )
    tasks_cap = positive_int("max_tasks_per_child", max_tasks_per_child)
    if tasks_cap is not None and concrete and not traits(model).recycles:
        recycled = " or ".join(f"model={m!r}" for m in names() if traits(m).recycles)
        raise ValueError(
            f"max_tasks_per_child is for worker processes, not model={model!r}: use "
            f"{recycled} (or 'auto', where it applies if auto chooses one)"
        )
    return initializer, tuple(initargs), tasks_cap


def check_worker_state(worker_state: object, initializer: Callable[..., object] | None) -> bool:
    """``worker_state=`` checked against the ``initializer`` it needs."""
    if not isinstance(worker_state, bool):
        raise TypeError(f"worker_state must be True or False, not {worker_state!r}")
    if worker_state and initializer is None:
        raise ValueError(
            "worker_state=True hands fn what initializer= returns, once per worker: pass "
            "initializer= (and initargs=) too"
        )
    return worker_state


def check_worker_state_fn(fn: Callable[..., Any], initializer: Callable[..., object]) -> None:
    """An ``async def`` initializer's state can only be awaited for an ``async def`` fn."""
    if is_async_callable(initializer) and not is_async_callable(fn):
        raise TypeError(
            "initializer= is an async def function, and fn is a plain one that could not "
            "await the state it makes: make the initializer a plain function, or fn async"
        )


def check_require(model: str, require: object) -> Require:
    """``require=`` checked against the ``model`` named (auto honours it when it chooses)."""
    if require is None:
        return None
    if require != "sharedmem":
        raise ValueError(f"require must be 'sharedmem' or None, not {require!r}")
    if model != "auto" and not traits(model).shares_memory:
        shared = ", ".join(repr(m) for m in names() if traits(m).shares_memory)
        raise ValueError(
            f"require='sharedmem' asks for calls that share this process's memory, and "
            f"model={model!r} runs them elsewhere: use one of {shared}, or 'auto'"
        )
    return "sharedmem"


def check_fn(fn: object) -> None:
    """``fn`` is callable, or a TypeError says what to pass."""
    if not callable(fn):
        raise TypeError(
            f"fn must be a callable that takes one item, not {type(fn).__name__}; "
            "for several arguments per item use pickpool.star(fn)"
        )


def positive_int(name: str, value: object) -> int | None:
    """``value`` as a whole number of at least 1, or None; a TypeError/ValueError naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def positive_rate(value: object) -> float | None:
    """``max_rate`` checked: calls per second, a positive finite number, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"max_rate must be calls per second (a number) or None, not {value!r}")
    rate = float(value)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"max_rate must be a positive number of calls per second, got {value}")
    return rate


def positive_seconds(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` as a positive, finite number of seconds, or a TypeError/ValueError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        or_none = " or None" if optional else ""
        raise TypeError(f"{name} must be seconds (a number){or_none}, not {type(value).__name__}")
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return seconds


def length_hint(items: Any) -> int | None:
    """``len(items)`` where it exists, without consuming anything."""
    try:
        return len(items)
    except TypeError:
        return None
