"""One module per concurrency model, each a small class behind :class:`Backend`, and the
registry of what the core needs to know of each model (:class:`Traits`, :func:`traits`).

The core (``_api``, ``_options``, ``_driver``, ``_auto``) knows no backend by name: it asks a
model's :class:`Traits` (how it is fed, its defaults, its checks) and the driver submits chunks
and collects outcomes. A backend knows nothing of chunking, ordering, retries or error policy,
nor of finding which item of a chunk kills its worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

from .._inner import InnerThreads
from .._task import Caller, Outcome, Task

ModelName = Literal["serial", "threads", "processes", "asyncio", "interpreters", "dask"]
# The models every interpreter has, on one machine; then those that need more.
MODELS: tuple[ModelName, ...] = ("serial", "threads", "processes", "asyncio")
EXTRA_MODELS: tuple[ModelName, ...] = ("interpreters", "dask")

# Threads mostly wait (blocking I/O), so more of them than cores pays; bounded because each
# blocked thread costs memory and a GIL hand-off.
THREADS_PER_CORE: Final = 8
MAX_THREADS: Final = 64
# Coroutines cost ~1 kB suspended: many can wait at once.
ASYNC_CONCURRENCY: Final = 1024


def _one(cores: int, is_async: bool) -> int:
    return 1


def _cores(cores: int, is_async: bool) -> int:
    return cores


def _waiting(cores: int, is_async: bool) -> int:
    return min(MAX_THREADS, THREADS_PER_CORE * cores)


def _coroutines(cores: int, is_async: bool) -> int:
    return ASYNC_CONCURRENCY if is_async else _waiting(cores, is_async)


def _dask_prepare(client: Any, workers: Any) -> tuple[Any, Any]:
    from ._dask import active_client, cluster_threads

    client = active_client(client)
    return client, cluster_threads(client) if workers is None else workers


def _interpreters_prepare(client: Any, workers: Any) -> tuple[Any, Any]:
    from ._interpreters import check_available

    check_available()
    return client, workers


@dataclass(frozen=True, slots=True)
class Traits:
    """What the core needs to know of one model, without importing its backend.

    The core asks these, never the model's name: adding a model is a backend module, its name
    in :data:`ModelName` and :data:`MODELS` (or :data:`EXTRA_MODELS`), and one entry in
    :data:`TRAITS` (and, for auto to choose it, a prediction in the cost model).
    """

    name: ModelName
    # Workers when none are given, from the usable cores and whether ``fn`` is a coroutine
    # function (see ``_options.default_workers``).
    default_workers: Callable[[int, bool], int]
    # Runs each item in the caller's thread, one at a time (and so, one worker whatever
    # ``workers`` says; the driver runs the plain loop with the backend's ``inline`` caller).
    inline: bool = False
    # The model that runs it when items have a ``timeout`` (the caller's own thread cannot
    # be interrupted; a one-thread pool can abandon an item), if not itself.
    with_timeout: ModelName | None = None
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
    # Runs coroutines on the caller's own event loop under ``amap``.
    on_loop: bool = False
    # Runs on a cluster: takes ``client=``.
    takes_client: bool = False
    # Under auto, what the latency-driven limit (or throughput climbing) may hold: "calls"
    # (every call: threads), "coroutines" (coroutines that wait: asyncio's loop), or None.
    climbs: Literal["calls", "coroutines"] | None = None
    # Checks made at the call, before anything runs: ``(client, workers)`` resolved (a missing
    # extra or cluster is reported at the call, even by imap).
    prepare: Callable[[Any, Any], tuple[Any, Any]] | None = None


TRAITS: Final[dict[str, Traits]] = {
    "serial": Traits("serial", _one, inline=True, with_timeout="threads"),
    "threads": Traits("threads", _waiting, climbs="calls"),
    "processes": Traits("processes", _cores, batched=True, pickles=True, recycles=True),
    "asyncio": Traits("asyncio", _coroutines, hops=True, on_loop=True, climbs="coroutines"),
    "interpreters": Traits(
        "interpreters",
        _cores,
        batched=True,
        silent_starts=True,
        initializer=False,
        prepare=_interpreters_prepare,
    ),
    "dask": Traits(
        "dask",
        _waiting,
        batched=True,
        silent_starts=True,
        initializer=False,
        takes_client=True,
        prepare=_dask_prepare,
    ),
}


# The model that takes every option: ``model="auto"``'s options are checked as its, at the call.
CHECKED_AS_AUTO: Final = "threads"


def traits(model: str) -> Traits:
    """The :class:`Traits` of ``model`` (a backend's name, not ``"auto"``)."""
    return TRAITS[model]


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
    # calls share, an int caps them, "leave" leaves them (see pickpool._inner).
    inner_threads: InnerThreads = None
    # ``initializer``: called with ``initargs`` once in each new worker thread or process before
    # its first item (callers make the run's workers fresh: state it sets must not leak into
    # other runs).
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    # ``recycles``: a worker runs at most this many items, then a new one takes its place.
    max_tasks_per_child: int | None = None


# Setup's fields that only some models read, and the trait that says which (see Setup).
FIELD_TRAITS: Final[dict[str, str]] = {
    "fn_bytes": "pickles",
    "climb": "climbs",
    "client": "takes_client",
    "initializer": "initializer",
    "initargs": "initializer",
    "max_tasks_per_child": "recycles",
}


class Backend(Protocol):
    """The contract every model implements: start, take chunks, hand back outcomes, stop.

    * ``__init__(setup)`` starts the workers (or prepares to, lazily).
    * :meth:`submit` hands over a task and returns at once; it never runs user code in the
      caller's thread except in the serial backend, and raises ``TypeError`` at once for work
      that cannot be sent (an unpicklable item for processes).
    * :meth:`collect` blocks up to ``timeout`` seconds (``None``: until something happens) and
      returns the outcomes that finished, possibly for part of a task and possibly none. Every
      item submitted gets exactly one outcome unless the backend is closed first; an item that
      overran ``setup.timeout`` gets a :class:`~pickpool.TaskTimeout` outcome, an item running
      alone whose worker died a :class:`~pickpool.WorkerCrashed` outcome, and each item of a
      chunk of several whose worker died a ``LOST`` outcome carrying a ``WorkerCrashed``
      (which item killed it is unknown). The driver sends each ``LOST`` item again alone, not
      counted as a try; a backend never re-runs or splits a task itself.
    * :meth:`close` stops every worker. ``cancel=True`` abandons work not yet started and stops
      what runs as far as the model allows (processes are killed; threads are waited for).
      It must be safe to call twice, and after a failed ``__init__``.

    A backend that runs each item in the caller's thread, one at a time (serial), is also
    :class:`Inline`.
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
class Wakeable(Backend, Protocol):
    """A backend that can be fed from other threads' submissions (``pickpool.Executor``).

    :meth:`wake` may be called from any thread: a :meth:`~Backend.collect` waiting in the
    backend's own thread then returns soon, with whatever outcomes it has (maybe none). A wake
    that comes while nothing waits makes the next ``collect`` return at once.
    """

    def wake(self) -> None: ...


def load(model: str) -> Callable[[Setup], Backend]:
    """The backend class of ``model``, importing its module only now (processes stay unimported)."""
    module = importlib.import_module(f"{__name__}._{model}")
    backend_class: Callable[[Setup], Backend] = module.backend_class
    return backend_class
