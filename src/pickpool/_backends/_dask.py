"""``model="dask"``: chunks as tasks of a ``dask.distributed`` cluster.

For work that outgrows one machine, on a real cluster engine rather than a home-made one. The
client is the one given (``client=``) or the active default one (``distributed.get_client``);
pickpool never starts a cluster itself. Each chunk is one dask task that runs the chunk
through the same :class:`~pickpool._task.Caller` as every other model, so results, errors and
their order are the same. What dask adds:

* a worker that dies mid-task has its tasks re-run elsewhere by the scheduler; a task that kept
  killing workers (dask's ``allowed-failures``, 3 by default) fails its item with
  :class:`~pickpool.WorkerCrashed` (a chunk of several reports its items ``LOST``: the driver
  runs each again alone, to find the one that kills);
* ``timeout`` is measured from submission (dask does not say when a task starts, so pickpool
  keeps no more tasks in flight than the cluster has threads): an item past it fails with
  :class:`~pickpool.TaskTimeout` and its task is cancelled, though a task already running on a
  worker thread runs on there, as under threads, and that thread stays busy until it returns.

Installed with the ``dask`` extra (``pip install 'pickpool[dask]'``), imported only here.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from .. import _chunks
from .._costs import LOADS_PER_DUMPS, Costs, Option
from .._errors import BackendUnavailable, WorkerCrashed
from .._task import Outcome, Task, lost_chunk
from . import Model, Setup, Traits, waiting
from ._futures import failed_task, overdue, run_chunk, wait_for

INSTALL = "pip install 'pickpool[dask]'"


def distributed_module() -> Any:
    """``distributed``, or :class:`~pickpool.BackendUnavailable` saying what to install."""
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailable(
            f"model='dask' needs dask.distributed, which is not installed: {INSTALL}"
        ) from exc
    return distributed


def active_client(client: Any = None) -> Any:
    """``client``, or the active default client; :class:`~pickpool.BackendUnavailable` if none."""
    distributed = distributed_module()
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise BackendUnavailable(
            "model='dask' needs a dask cluster, and no client is active: start one "
            "(distributed.Client('tcp://scheduler:8786'), or Client() for a local cluster) "
            "or pass client="
        ) from None


def cluster_threads(client: Any) -> int:
    """Worker threads across the cluster (at least 1)."""
    threads: int = sum(client.nthreads().values())
    return max(1, threads)


class DaskBackend:
    def __init__(self, setup: Setup) -> None:
        self._closed = True  # until built: close() after a failed __init__ has nothing to do
        self._setup = setup
        self._distributed = distributed_module()
        self._client = active_client(setup.client)
        self._run = uuid.uuid4().hex[:12]
        self._futures: dict[Any, tuple[Task, float]] = {}  # future -> (task, submitted at)
        self._closed = False

    def submit(self, task: Task) -> None:
        future = self._client.submit(
            run_chunk,
            self._setup.fn,
            task,
            key=f"pickpool-{self._run}-{task[0]}-{task[1]}",
            pure=False,
        )
        self._futures[future] = (task, time.monotonic())

    def collect(self, timeout: float | None) -> list[Outcome]:
        if not self._futures:
            return []
        limit = self._setup.timeout
        try:
            done, _ = self._distributed.wait(
                list(self._futures),
                timeout=wait_for(self._futures, limit, timeout),
                return_when="FIRST_COMPLETED",
            )
        except TimeoutError:
            done = set()
        outcomes: list[Outcome] = []
        for future in done:
            task, _ = self._futures.pop(future)
            outcomes += self._outcomes(future, task)
        if limit is not None:
            outcomes += overdue(
                self._futures, limit, " on the dask cluster; its task was cancelled"
            )
        return outcomes

    def _outcomes(self, future: Any, task: Task) -> list[Outcome]:
        if future.status == "cancelled":
            gone = WorkerCrashed(f"the dask task of item {task[1]} was cancelled")
            return failed_task(task, gone)
        if future.status == "finished":
            try:
                result: list[Outcome] = future.result()
            except Exception as unloadable:  # it finished, but its result did not load here
                return failed_task(task, unloadable)
            return result
        error: BaseException = future.exception()
        if _killed(future):
            if len(task[2]) > 1:
                crash = WorkerCrashed(
                    f"the dask workers running items {task[1]} to {task[1] + len(task[2]) - 1} "
                    f"died each time ({error}); which of them killed them is unknown: each "
                    "runs again alone"
                )
                crash.__cause__ = error
                return lost_chunk(task, crash)
            crash = WorkerCrashed(
                f"the dask workers running item {task[1]} died each time ({error}); likely a "
                "crash in C code, os._exit, or running out of memory"
            )
            crash.__cause__ = error
            return failed_task(task, crash)
        return failed_task(task, error)

    def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        futures, self._futures = list(self._futures), {}
        if futures:
            self._client.cancel(futures)

    def __repr__(self) -> str:
        return f"<DaskBackend {len(self._futures)} tasks in flight on {self._client!r}>"


def _killed(future: Any) -> bool:
    """The task failed because the workers running it kept dying."""
    return bool(future.status == "error" and type(future.exception()).__name__ == "KilledWorker")


def prepare(client: Any, workers: Any) -> tuple[Any, Any]:
    """At the call: the client to run on (a missing extra or cluster is said there), and its
    workers' threads as the default ``workers``."""
    client = active_client(client)
    return client, cluster_threads(client) if workers is None else workers


@dataclass(frozen=True, slots=True)
class Cluster:
    """An active dask cluster, as the cost model sees it."""

    threads: int  # worker threads across the cluster
    round_trip: float  # seconds for a trivial task, submit to result


def observe() -> Cluster | None:
    """The active dask client's cluster, measured; None without one (dask is not imported)."""
    if "distributed" not in sys.modules:
        return None  # nobody started a client without importing distributed
    try:
        client = active_client()
    except Exception:
        return None
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        client.submit(_noop, pure=False).result()
        best = min(best, time.perf_counter() - start)
    return Cluster(threads=cluster_threads(client), round_trip=best)


def _noop() -> None:
    return None


def unavailable() -> str | None:
    """Why dask cannot run here now (no extra, no active client), or None; without
    importing dask where nobody did (a client is started by importing it)."""
    if "distributed" not in sys.modules:
        return f"no dask client is active (start one, or pass client=); the extra: {INSTALL}"
    try:
        active_client()
    except BackendUnavailable as exc:
        return str(exc)
    return None


# What the scheduler and the client spend on each task.
DASK_TASK: Final = 1e-3


def predict(costs: Costs) -> Option | None:
    """Chunks as tasks of the active cluster: its threads, its round trip per chunk, and this
    process's pickling; None without an active cluster."""
    cluster = costs.m.facts.get(MODEL.name)
    if not isinstance(cluster, Cluster):
        return None
    ev = costs.ev
    if ev.unpicklable:
        return Option(MODEL.name, cluster.threads, 1, math.inf)
    k = costs.workers or cluster.threads
    wall = ev.wall + costs.coroutine_call()
    ch = costs.chunksize or (1 if costs.timeout is not None else 0)
    if not ch:
        ch = _chunks.for_round_trip(
            round_trip=cluster.round_trip, wall=wall, items=costs.n, workers=k
        )
    pickling = ev.item_pickle + LOADS_PER_DUMPS * ev.result_pickle
    per = max(
        (wall + cluster.round_trip / ch) / k,
        DASK_TASK / ch + pickling,  # the scheduler and this process, per task and item
    )
    seconds = 2 * cluster.round_trip + costs.n * per + 0.5 * ch * wall
    return Option(MODEL.name, k, ch, seconds, per)


MODEL = Model(
    "dask",
    Traits(
        waiting,
        batched=True,
        silent_starts=True,
        initializer=False,
        takes_client=True,
        rank=(5, 5),
        executor=False,
        instead="distributed.Client is a concurrent.futures executor already",
    ),
    DaskBackend,
    predict=predict,
    observe=observe,
    prepare=prepare,
    unavailable=unavailable,
)
