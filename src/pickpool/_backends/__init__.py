"""One module per concurrency model, each a small class behind :class:`Backend`.

The driver (``pickpool._driver``) knows no backend by name: it submits chunks and collects
outcomes. A backend knows nothing of chunking, ordering, retries or error policy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from .._inner import InnerThreads
from .._task import Outcome, Task

ModelName = Literal["serial", "threads", "processes", "asyncio", "interpreters", "dask"]
# The models every interpreter has, on one machine; then those that need more.
MODELS: tuple[ModelName, ...] = ("serial", "threads", "processes", "asyncio")
EXTRA_MODELS: tuple[ModelName, ...] = ("interpreters", "dask")


@dataclass(frozen=True, slots=True)
class Setup:
    """What a backend is started with."""

    fn: Callable[[Any], Any]
    workers: int
    is_async: bool
    timeout: float | None
    fn_bytes: bytes | None = None  # ``fn`` pickled for processes, when the caller did already
    # Threads: how many run at first, climbing (up to ``workers``) by measured throughput.
    concurrency: int | None = None
    # Threads: the calls' latency with nothing else in flight, as the probe measured it; given,
    # the count follows the calls' latency and failures (a far side's capacity), not throughput.
    latency: float | None = None
    client: Any = None  # dask: the distributed.Client to run on (None: the active one)
    # New worker processes and threads for this run, none taken from or given back to the
    # warm pools: no state left by an earlier call (resource limits, globals, thread-locals).
    fresh: bool = False
    # Native thread pools (BLAS, OpenMP...) inside calls: None fits them to the cores the run's
    # calls share, an int caps them, "leave" leaves them (see pickpool._inner).
    inner_threads: InnerThreads = None
    # Called with ``initargs`` once in each new worker thread or process before its first item
    # (callers make the run's workers fresh: state it sets must not leak into other runs).
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    # Processes: a worker runs at most this many items, then a new one takes its place.
    max_tasks_per_child: int | None = None


class Backend(Protocol):
    """The contract every model implements: start, take chunks, hand back outcomes, stop.

    * ``__init__(setup)`` starts the workers (or prepares to, lazily).
    * :meth:`submit` hands over a task and returns at once; it never runs user code in the
      caller's thread except in the serial backend, and raises ``TypeError`` at once for work
      that cannot be sent (an unpicklable item for processes).
    * :meth:`collect` blocks up to ``timeout`` seconds (``None``: until something happens) and
      returns the outcomes that finished, possibly for part of a task and possibly none. Every
      item submitted gets exactly one outcome unless the backend is closed first; an item that
      overran ``setup.timeout`` gets a :class:`~pickpool.TaskTimeout` outcome, one whose worker
      died a :class:`~pickpool.WorkerCrashed` outcome.
    * :meth:`close` stops every worker. ``cancel=True`` abandons work not yet started and stops
      what runs as far as the model allows (processes are killed; threads are waited for).
      It must be safe to call twice, and after a failed ``__init__``.

    A backend that runs each item in the caller's thread, one at a time (serial), may also
    have an ``inline`` attribute, a :class:`~pickpool._task.Caller`: the driver then runs the
    plain loop with it instead of submitting and collecting, which costs a third as much.
    """

    def submit(self, task: Task) -> None: ...

    def collect(self, timeout: float | None) -> list[Outcome]: ...

    def close(self, *, cancel: bool) -> None: ...


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
