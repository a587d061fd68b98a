"""The models, one module each behind :class:`Backend`, and the registry the rest asks about them.

Each model is one module, ``_backends/_<name>.py``, that ends in ``MODEL = Model(...)``: its
:class:`Traits` (how it is fed, its defaults, what it supports), its backend class, and its
hooks: its prediction for the cost model, the facts of this machine that prediction reads,
the checks made at the call, its runner on the caller's event loop. The registry is one line
per model (:data:`_REGISTRY`); :func:`register` adds one at run time. Nothing outside this
package names a model: the core asks the registry (:func:`names`, :func:`model`,
:func:`traits`), and a model's module is imported only when the model is first asked about.

A backend knows nothing of chunking, ordering, retries or error policy, nor of finding which
item of a chunk kills its worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from .._native import InnerThreads
from .._pace import Pacer
from .._task import Caller, Outcome, Task

if TYPE_CHECKING:
    from .._costs import Costs, Option

ModelName = Literal["serial", "threads", "processes", "asyncio", "interpreters", "dask"]

# The registry: one line per model, its name and the module that defines it (``MODEL``).
_REGISTRY: dict[str, str] = {
    "serial": f"{__name__}._serial",
    "threads": f"{__name__}._threads",
    "processes": f"{__name__}._processes",
    "asyncio": f"{__name__}._asyncio",
    "interpreters": f"{__name__}._interpreters",
    "dask": f"{__name__}._dask",
}
# The models every interpreter has, on one machine; the others need more (Python 3.14, a
# dask cluster).
MODELS: tuple[ModelName, ...] = ("serial", "threads", "processes", "asyncio")
EXTRA_MODELS: tuple[ModelName, ...] = ("interpreters", "dask")

# The models pickpool runs calls on for its own purposes, by what they are: the plain loop (the
# probe's calls alone; the baseline every prediction is compared with), calls side by side in
# this process's threads (the probe's scaling test and ramp), and coroutines on one event loop
# (the probe of a coroutine function).
LOOP: Final = "serial"
THREADS: Final = "threads"
COROUTINES: Final = "asyncio"
# Worker processes: where joblib's own backend (loky) runs its tasks, and so pickpool's joblib
# backend by default.
PROCESSES: Final = "processes"

# Modules worker processes import as they start: those that register something with a
# library in this process (``pickpool.joblib`` adds itself), so that a task there finds it
# too (a nested ``joblib.Parallel(backend="pickpool")``).
WORKER_IMPORTS: Final[set[str]] = set()

# Threads mostly wait (blocking I/O), so more of them than cores pays; bounded because each
# blocked thread costs memory and a GIL hand-off.
THREADS_PER_CORE: Final = 8
MAX_THREADS: Final = 64
# Coroutines cost ~1 kB suspended: many can wait at once.
ASYNC_CONCURRENCY: Final = 1024


def one(cores: int, is_async: bool) -> int:
    """Default workers: 1."""
    return 1


def every_core(cores: int, is_async: bool) -> int:
    """Default workers: one per usable core."""
    return cores


def waiting(cores: int, is_async: bool) -> int:
    """Default workers for calls that mostly wait: 8 per core, at most 64."""
    return min(MAX_THREADS, THREADS_PER_CORE * cores)


def coroutines(cores: int, is_async: bool) -> int:
    """Default workers on an event loop: 1024 coroutines, or for a plain function the
    threads of :func:`waiting`."""
    return ASYNC_CONCURRENCY if is_async else waiting(cores, is_async)


@dataclass(frozen=True, slots=True)
class Traits:
    """What the core needs to know of one model, beside its hooks (see :class:`Model`)."""

    # Workers when none are given, from the usable cores and whether ``fn`` is a coroutine
    # function (one of :func:`one`, :func:`every_core`, :func:`waiting`, :func:`coroutines`).
    default_workers: Callable[[int, bool], int]
    # Runs each item in the caller's thread, one at a time (and so, one worker whatever
    # ``workers`` says; the driver runs the plain loop with the backend's ``inline`` caller).
    inline: bool = False
    # The model that runs it when items have a ``timeout`` (the caller's own thread cannot
    # be interrupted; a one-thread pool can abandon an item), if not itself.
    with_timeout: str | None = None
    # Each hand-off is costly (pickling, a remote future): chunks of several items by default.
    batched: bool = False
    # A chunk's items run concurrently, a chunk is only a hop to where they run: one window
    # for all, chunks sized per hop, not per worker.
    hops: bool = False
    # Its futures do not say when a task starts: with a timeout, no more in flight than the
    # workers, so that none waits in a queue while its timeout runs.
    silent_starts: bool = False
    # The function crosses to the workers pickled: pickled once at the call (an unpicklable
    # function is reported there, even by ``imap``).
    pickles: bool = False
    # Worker processes that ``max_tasks_per_child`` can replace; ``initializer`` supported.
    recycles: bool = False
    initializer: bool = True
    # Runs on a cluster: takes ``client=``.
    takes_client: bool = False
    # Its workers are this process's threads, which it names as the run asks.
    names_threads: bool = False
    # Its calls start where it runs them, not when they are handed over (a loop that a blocking
    # coroutine holds up starts what waited all at once): it paces their starts itself, with
    # the run's pacer (``max_rate``), and the loop hands them over unpaced.
    paces_starts: bool = False
    # Under auto, what the latency-driven limit (or throughput climbing) may hold: "calls"
    # (every call: threads), "coroutines" (coroutines that wait: asyncio's loop), or None.
    climbs: Literal["calls", "coroutines"] | None = None
    # A plain function's calls run on this process's threads: what one such model was seen
    # to do in a run (the GIL, native pools fighting for the cores), the others would do too.
    plain_on_threads: bool = False
    # Calls share the caller's memory (what they write to a global, the caller sees).
    shares_memory: bool = False
    # A global the run's ``initializer`` sets is one worker's own: each worker is a process (or
    # an interpreter) of its own, or there is one worker. Not so for a pool of threads, where
    # every worker reads the one global that the last initializer set.
    worker_globals: bool = False
    # On a near tie in the cost model, the lower rank wins: fewer moving parts, no pickling,
    # one machine. (For a plain function, for a coroutine function.)
    rank: tuple[int, int] = (9, 9)
    # What one of its workers is called in the advice's sentences.
    unit: str = "worker"
    # ``pickpool.Executor`` (and so the joblib backend) can run calls on it; if not, what to
    # use instead, for the error message.
    executor: bool = True
    instead: str = ""


class LoopRunner(Protocol):
    """A model's runner of items as tasks of the current event loop (``amap`` on the caller's
    loop): it reports outcomes as the backend protocol does, to the ``emit`` it was made with.
    ``peak``: the most calls it ran at once."""

    peak: int

    def start(self, task: Task) -> None: ...

    async def cancel(self) -> None: ...

    async def ashutdown_executor(self, *, cancel: bool = False) -> None: ...

    async def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Model:
    """One model, as its module defines it (``MODEL``) for the registry."""

    name: str
    traits: Traits
    # The backend class (or any callable that starts one from a Setup).
    backend: Callable[[Setup], Backend]
    # Its predicted seconds for a batch (see ``_costs``); None where it cannot run here (its
    # facts say so). A model without a prediction is never chosen by auto.
    predict: Callable[[Costs], Option | None] | None = None
    # The facts of this machine its prediction reads (``Machine.facts[name]``), observed now.
    observe: Callable[[], object] | None = None
    # Checks made at the call, before anything runs: ``(client, workers)`` resolved (a missing
    # extra or cluster is reported at the call, even by imap).
    prepare: Callable[[Any, Any], tuple[Any, Any]] | None = None
    # Runs coroutines on the caller's own event loop under ``amap``: the runner, made there.
    loop_runner: Callable[[Setup, Callable[[list[Outcome]], None]], LoopRunner] | None = None
    # Why it cannot run here now (what to install or start), or None if it can; asked by
    # ``pickpool doctor``, cheaply (importing nothing heavy).
    unavailable: Callable[[], str | None] | None = None


_loaded: dict[str, Model] = {}


def register(name: str, module: str) -> None:
    """Add the model defined by ``module`` (its ``MODEL``) under ``name``: from then on every
    part of pickpool considers it (auto, ``advise``, the Executor, the joblib backend).

    Example::

        register("ray", "mypackage.pickpool_ray")   # MODEL = Model("ray", ...)
    """
    _REGISTRY[name] = module
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    """Remove a model :func:`register` added."""
    _REGISTRY.pop(name, None)
    _loaded.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered model's name."""
    return tuple(_REGISTRY)


def model(name: str) -> Model:
    """The :class:`Model` registered as ``name``, importing its module the first time."""
    found = _loaded.get(name)
    if found is None:
        found = importlib.import_module(_REGISTRY[name]).MODEL
        if not isinstance(found, Model) or found.name != name:
            raise TypeError(f"{_REGISTRY[name]}.MODEL must be a Model named {name!r}")
        _loaded[name] = found
    return found


def traits(name: str) -> Traits:
    """The :class:`Traits` of model ``name`` (a backend's name, not ``"auto"``)."""
    return model(name).traits


def load(name: str) -> Callable[[Setup], Backend]:
    """The backend class of model ``name``."""
    return model(name).backend


@dataclass(frozen=True, slots=True)
class Climb:
    """How a model that climbs (:attr:`Traits.climbs`) moves its count of calls in flight."""

    start: int  # how many run at first, climbing up to ``Setup.workers``
    # The calls' latency with nothing else in flight, as the probe measured it; given, the count
    # follows the calls' latency and failures (a far side's capacity); None, their throughput.
    latency: float | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    """What a backend is started with.

    A field marked with a trait is only for the models that have it (and only they read it:
    ``tests/test_architecture.py`` checks); the others are for every model.
    """

    fn: Callable[[Any], Any]
    workers: int
    is_async: bool
    timeout: float | None
    # ``pickles``: ``fn`` pickled, when the caller did already (None: the backend pickles it).
    fn_bytes: bytes | None = None
    # ``climbs``: the count of calls in flight starts lower than ``workers`` and moves (None:
    # all ``workers`` run at once).
    climb: Climb | None = None
    # ``takes_client``: the cluster's client to run on (None: the active one).
    client: Any = None
    # New worker processes and threads for this run, none taken from or given back to the
    # warm pools: no state left by an earlier call (resource limits, globals, thread-locals).
    fresh: bool = False
    # Native thread pools (BLAS, OpenMP...) inside calls: None fits them to the cores the run's
    # calls share, an int caps them, "leave" leaves them (see pickpool._native).
    inner_threads: InnerThreads = None
    # The caller's ``max_concurrency``: calls at once, at most, those left to finish in the
    # background past their timeout (a thread cannot be killed) included.
    max_concurrency: int | None = None
    # ``initializer``: called with ``initargs`` once in each new worker thread or process before
    # its first item (callers make the run's workers fresh: state it sets must not leak into
    # other runs).
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    # ``recycles``: a worker runs at most this many items, then a new one takes its place.
    max_tasks_per_child: int | None = None
    # ``recycles``: how worker processes start ("spawn", "forkserver"...; None: pickpool's
    # choice for this platform), as an Executor's ``mp_context`` says.
    start_method: str | None = None
    # ``paces_starts``: the run's pacer (``max_rate``), for the model to pace its calls' starts.
    pacer: Pacer | None = None
    # ``names_threads``: worker threads are named "prefix_0", "prefix_1"... while they serve
    # the run (None: pickpool's own name), as an Executor's ``thread_name_prefix`` asks.
    thread_name_prefix: str | None = None


# Setup's fields that only some models read, and the trait that says which (see Setup).
FIELD_TRAITS: Final[dict[str, str]] = {
    "fn_bytes": "pickles",
    "climb": "climbs",
    "client": "takes_client",
    "initializer": "initializer",
    "initargs": "initializer",
    "max_tasks_per_child": "recycles",
    "start_method": "recycles",
    "pacer": "paces_starts",
    "thread_name_prefix": "names_threads",
}


class Backend(Protocol):
    """The contract every model implements: start, take chunks, hand back outcomes, stop.

    * ``__init__(setup)`` starts the workers (or prepares to, lazily).
    * :meth:`submit` hands over a task and returns at once; it never runs user code in the
      caller's thread except in the serial backend, and raises ``TypeError`` at once for work
      that cannot be sent (an unpicklable item for processes).
    * :meth:`collect` blocks up to ``timeout`` seconds (``None``: until something happens) and
      returns the outcomes that finished, possibly for part of a task and possibly none; with
      nothing in flight it returns at once. Every item submitted gets exactly one outcome
      unless the backend is closed first; an item that overran ``setup.timeout`` gets a
      :class:`~pickpool.TaskTimeout` outcome, an item running alone whose worker died a
      :class:`~pickpool.WorkerCrashed` outcome, and each item of a chunk of several whose
      worker died a ``LOST`` outcome carrying a ``WorkerCrashed`` (which item killed it is
      unknown). The driver sends each ``LOST`` item again alone, not counted as a try; a
      backend never re-runs or splits a task itself.
    * :meth:`close` stops every worker. ``cancel=True`` abandons work not yet started and stops
      what runs as far as the model allows (processes are killed; threads are waited for).
      It must be safe to call twice, and after a failed ``__init__``.

    A backend that runs each item in the caller's thread, one at a time (serial), is also
    :class:`Inline`; one that the Executor can feed from other threads is :class:`Wakeable`.
    """

    def submit(self, task: Task) -> None: ...

    def collect(self, timeout: float | None) -> list[Outcome]: ...

    def close(self, *, cancel: bool) -> None: ...


@runtime_checkable
class Inline(Protocol):
    """A backend that runs each item in the caller's thread, one at a time (serial): the driver
    runs the plain loop with its :attr:`inline` caller instead of submitting and collecting,
    which costs a third as much."""

    inline: Caller | None  # None: not this run (each call must first cap native pools)


@runtime_checkable
class Peaked(Protocol):
    """A backend that counts its calls running at once: :attr:`peak` is the most there were
    (a report's ``workers``: what ran, not the ceiling a limiter could have climbed to). The
    driver falls back to the items in flight, at most the plan's workers."""

    peak: int


@runtime_checkable
class Wakeable(Backend, Protocol):
    """A backend that can be fed from other threads' submissions (``pickpool.Executor``).

    :meth:`wake` may be called from any thread: a :meth:`~Backend.collect` waiting in the
    backend's own thread then returns soon, with whatever outcomes it has (maybe none). A wake
    that comes while nothing waits makes the next ``collect`` return at once.
    """

    def wake(self) -> None: ...
