"""A joblib parallel backend on :class:`pickpool.Executor`, for joblib and scikit-learn code.

Importing this module registers a backend named ``"pickpool"``; code written for joblib, and
scikit-learn's ``n_jobs``, then run on pickpool's workers unchanged::

    import joblib
    import pickpool.joblib  # registers the backend

    with joblib.parallel_config(backend="pickpool", timeout=600):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=4)

By default the tasks run on worker processes (as joblib's own default, loky, runs them), with
what pickpool adds to them: a worker that dies (a segfault, ``os._exit``, the OOM killer) fails
only the batch it was running, with :class:`~pickpool.WorkerCrashed`, rather than breaking the
whole pool, and with ``timeout=`` a stuck task fails with :class:`~pickpool.TaskTimeout` and
only its worker is killed. Functions travel with cloudpickle: lambdas and functions of
``__main__`` work.

Why processes and not ``model="auto"`` by default: code that calls joblib has already chosen.
It was written for loky's processes, and where its authors knew better they said so per call
(``prefer="threads"``, ``require="sharedmem"``; scikit-learn's estimators do), so the backend
keeps that choice and adds its fault handling. ``model="auto"`` is for code that never chose:
it times the first batch of each function and sends the rest where the cost model says.

``n_jobs`` means what it means to joblib: ``-1`` is every usable core (CPU affinity and a
container's CPU quota honoured), ``-2`` all but one, and an unset ``n_jobs`` (``None``) is 1,
which joblib runs in the calling thread (``joblib.parallel_backend`` sets -1 unless told).

joblib is an optional dependency: ``pip install joblib`` (or ``pip install 'pickpool[joblib]'``).
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final

try:
    import joblib  # type: ignore[import-untyped]
    from joblib.disk import memstr_to_bytes  # type: ignore[import-untyped]
    from joblib.parallel import (  # type: ignore[import-untyped]
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        ThreadingBackend,
    )
except ModuleNotFoundError as exc:
    if exc.name is None or exc.name.partition(".")[0] != "joblib":
        raise  # joblib is there, and something it imports is not: its own message says what
    raise ImportError(
        "pickpool.joblib needs joblib, which is not installed: pip install joblib "
        "(or pip install 'pickpool[joblib]')",
        name="joblib",
    ) from exc

from . import _backends, _machine
from ._executor import Executor, check_executor_model
from ._memmap import Memmapping
from ._native import InnerThreads, check_inner_threads
from ._options import check

__all__ = ["PickpoolBackend"]

_NAME: Final = "pickpool"


# (Long on purpose: joblib's ParallelBackendBase contract, method by method.)
class PickpoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``"pickpool"`` backend: each ``Parallel`` call runs on a :class:`pickpool.Executor`.

    The executor is started when the ``Parallel`` call starts, with ``n_jobs`` workers, and
    shut down when it ends. Its worker processes are kept warm between calls, as loky keeps
    its own: the next call takes them idle, with what they imported (scikit-learn, say)
    already loaded; unused for 60 s, or as the program exits, they stop. Options, given to
    ``parallel_config`` (or ``parallel_backend``) with the backend's name, or to the class::

        with joblib.parallel_config(backend="pickpool", model="threads", n_jobs=8):
            pages = joblib.Parallel()(joblib.delayed(fetch)(url) for url in urls)

        backend = pickpool.joblib.PickpoolBackend(timeout=60, max_tasks_per_child=100)
        with joblib.parallel_config(backend=backend, n_jobs=-1):
            grid.fit(X, y)

    Args:
        model: ``"processes"`` (the default, as joblib's loky; and as joblib's own default
            does, a call that says ``prefer="threads"``, as scikit-learn's forests do, runs
            on threads unless ``model`` is given), ``"threads"`` (for tasks that
            wait, or whose native code releases the GIL: they then share the caller's memory,
            which joblib's ``require="sharedmem"`` asks for), ``"auto"`` (the first batch is
            timed on a thread, the others go to processes if they compute in Python, to
            threads otherwise; under ``require="sharedmem"`` to threads only) or ``"serial"``
            (in the calling thread, one at a time: for debugging).
        timeout: seconds a task may run; longer, it fails with :class:`~pickpool.TaskTimeout`
            (its worker process killed under processes). joblib hands its workers batches of
            tasks: the limit is per batch, so pass ``batch_size=1`` to ``Parallel`` to make it
            per task. A ``Parallel(timeout=...)`` is enforced the same way. One worker
            (``n_jobs=1``, or ``model="serial"``) runs the tasks in the calling thread, with
            no limit: joblib's own rule, which no backend can change.
        max_tasks_per_child: under processes, a worker runs at most this many batches, then a
            new one replaces it (for C extensions that leak).
        inner_threads: native thread pools (BLAS, OpenMP) in tasks: None fits them to the
            cores the tasks share, a number caps them, ``"leave"`` leaves them. joblib's
            ``inner_max_num_threads`` sets it too.
        initializer: called with ``initargs`` in each new worker before its first task.

    When a task fails, the call raises at once: the queued tasks are cancelled and the running
    ones stopped (under processes their workers are killed, as loky's are; threads run to
    their end).

    Large numpy arrays go to worker processes as loky sends them: an argument past
    ``Parallel``'s ``max_nbytes`` (1 MB by default) is written once to a file (in
    ``temp_folder``, or ``/dev/shm`` where it has room) that each worker maps with
    ``mmap_mode`` (read-only by default), and the files are deleted as the call ends. Tasks
    that run on threads get the caller's own arrays.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    # Read by joblib from the instance (set per model below); the class says processes.
    uses_threads = False
    supports_sharedmem = False

    def __init__(
        self,
        model: str | None = None,
        *,
        timeout: float | None = None,
        max_tasks_per_child: int | None = None,
        inner_threads: InnerThreads = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._model_given = False
        self.model = self._call_model = _backends.PROCESSES  # (the call's: see configure)
        self._set_options(
            model=model,
            timeout=timeout,
            max_tasks_per_child=max_tasks_per_child,
            inner_threads=inner_threads,
            initializer=initializer,
            initargs=initargs,
        )
        self._require: str | None = None
        self.parallel: Any = None
        self._n_jobs = 0
        # The executor of the Parallel call running, and those an abort stopped (shut down
        # without waiting: they are waited for when the call ends, so that none outlives it).
        self._executor: Executor | None = None
        self._retired: list[Executor] = []
        self._aborted = False
        # The memory-mapped arguments of the calls configured since the last terminate.
        self._memmapping: Memmapping | None = None
        self._mapped: list[Memmapping] = []
        # joblib's callbacks submit the next batches from the executor's own threads while the
        # caller's thread may be aborting: both swap the executor under this lock.
        self._lock = threading.Lock()

    def _set_options(self, **options: Any) -> None:
        """The backend's options, checked by the executor's own checks (a bad one is reported
        at once); those not given keep their value."""
        if options.get("model") is None:
            options.pop("model", None)
        else:
            self._model_given = True
        current = {
            "model": self.model,
            "timeout": getattr(self, "timeout", None),
            "max_tasks_per_child": getattr(self, "max_tasks_per_child", None),
            "inner_threads": getattr(self, "inner_threads", None),
            "initializer": getattr(self, "initializer", None),
            "initargs": getattr(self, "initargs", ()),
        }
        merged = {**current, **options}
        checked = check(**{**merged, "model": check_executor_model(merged["model"])})
        self.model = self._call_model = checked.model
        self.timeout = checked.timeout
        self.max_tasks_per_child = checked.max_tasks_per_child
        self.inner_threads = checked.inner_threads
        self.initializer = checked.initializer
        self.initargs = checked.initargs
        self.uses_threads = self._in_process
        # Under auto, a call that requires shared memory is routed to threads only.
        self.supports_sharedmem = self._in_process or self.model == "auto"

    @property
    def _in_process(self) -> bool:
        """Whether tasks run in this process, sharing its memory (``require="sharedmem"``)."""
        model = self._call_model
        return model != "auto" and _backends.traits(model).shares_memory

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The workers ``n_jobs`` stands for, by joblib's rules, counting the usable cores.

        ``-1`` is every core this process may use (affinity and cgroup quota, not the
        machine's count), ``-2`` all but one, and so on; ``None`` is 1, as is any ``n_jobs``
        under ``model="serial"``::

            PickpoolBackend().effective_n_jobs(-1)  # 8 on an 8-core machine
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or (self.model != "auto" and _backends.traits(self.model).inline):
            return 1
        if n_jobs != 1 and self.model == _backends.PROCESSES and _machine.daemonic():
            # As joblib's own process backends do (a daemonic process may start none).
            warnings.warn(
                "pickpool-backed parallel loops cannot start worker processes in a daemonic "
                "process (a multiprocessing.Pool's worker), setting n_jobs=1",
                stacklevel=3,
            )
            return 1
        if n_jobs < 0:
            return max(_machine.cores() + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start the executor for a ``Parallel`` call; return its number of workers.

        joblib calls it as a call starts (with its memory-mapping options for large arrays;
        ``prefer="threads"`` runs the call on threads unless ``model`` was given, and
        ``require="sharedmem"`` keeps auto's calls in this process, on threads). One worker
        runs the call in the calling thread, as joblib's own backends do::

            backend.configure(n_jobs=4, parallel=joblib.Parallel())  # 4
        """
        # This backend's options given to Parallel(...) itself (joblib hands them over here).
        ours = {k: v for k, v in backend_kwargs.items() if k in _OPTIONS}
        if ours:
            self._set_options(**ours)
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._n_jobs = n
        self._require = "sharedmem" if require == "sharedmem" else None
        # joblib's own default takes the hint; a model the user chose is kept.
        threads = prefer == "threads" and not self._model_given  # (joblib's hint)
        self._call_model = _backends.THREADS if threads else self.model
        self.uses_threads = self._in_process
        executor = self._new_executor()
        memmapping = None if self._in_process else _memmapping(parallel, backend_kwargs)
        with self._lock:
            old, self._executor = self._executor, executor
            if old is not None:  # configured twice with no terminate between
                self._retired.append(old)
            self._aborted = False
            self._memmapping = memmapping
            if memmapping is not None:
                self._mapped.append(memmapping)
        return n

    def _new_executor(self) -> Executor:
        # A Parallel(timeout=...) is only checked by joblib as it waits for results, and joblib
        # then relies on its backend to stop what still runs; the executor's timeout kills it.
        limits = [t for t in (self.timeout, getattr(self.parallel, "timeout", None)) if t]
        inner = self.inner_threads
        if inner is None and self.inner_max_num_threads is not None:
            inner = check_inner_threads(self.inner_max_num_threads)
        return Executor(
            self._call_model,
            self._n_jobs,
            initializer=self.initializer,
            initargs=self.initargs,
            max_tasks_per_child=self.max_tasks_per_child,
            timeout=min(limits) if limits else None,
            inner_threads=inner,
            require="sharedmem" if self._require and self._call_model == "auto" else None,
        )

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        """Run a batch of joblib tasks on the executor; its future, ``callback`` added.

        joblib calls it for each batch, and reads the result through
        :meth:`retrieve_result_callback`::

            future = backend.submit(batch, callback=tracker)
        """
        with self._lock:
            executor = self._executor
            if executor is None:
                if not self._aborted:
                    raise RuntimeError(
                        "the pickpool backend has no executor: Parallel configures it first"
                    )
                # A callback still dispatching the next batch after its call was aborted:
                # joblib drops the outcome of a call it aborted.
                future: Future[Any] = Future()
                future.cancel()
            else:
                if self._memmapping is not None:
                    func = self._memmapping.wrap(func)
                future = executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # Older joblib releases, from before submit, call apply_async.
    apply_async = submit

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results, or its exception raised as itself (``WorkerCrashed`` for a
        worker that died, ``TaskTimeout`` for one that overran ``timeout``)::

            backend.retrieve_result_callback(future)  # [1, 4, 9]
        """
        return out.result()

    def compute_batch_size(self) -> int:
        """Tasks per batch: 1 on threads (a hand-off costs little), and under processes as
        many as take about a fifth of a second, as loky does (each batch is pickled)::

            backend.compute_batch_size()  # 1 at first
        """
        if self._in_process:
            return 1
        size: int = super().compute_batch_size()
        return size

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed (or a generator of results was dropped): cancel the batches not
        started, and stop the running ones (their worker processes killed, as loky kills its
        own; a thread cannot be killed, and is waited for).

        With ``ensure_ready`` (a ``Parallel`` used as a context manager, whose next call
        reuses the backend) a new executor takes over at once::

            backend.abort_everything(ensure_ready=False)
        """
        fresh = self._new_executor() if ensure_ready and self._n_jobs else None
        with self._lock:
            old, self._executor = self._executor, fresh
            if old is not None:
                self._retired.append(old)
            self._aborted = True
        if old is not None:
            # The running tasks are stopped (their worker processes killed), as loky's are;
            # terminate() waits for what cannot be killed before the Parallel call returns.
            old._abort()

    def terminate(self) -> None:
        """Shut the executor down as the ``Parallel`` call ends, and wait for its calls (its
        idle workers are kept warm for the next)::

        backend.terminate()
        """
        with self._lock:
            executors = [*self._retired, self._executor]
            self._retired, self._executor = [], None
            mapped, self._mapped, self._memmapping = self._mapped, [], None
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        for memmapping in mapped:  # (no task that reads the files runs any more)
            memmapping.clean()
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """The backend of a ``Parallel`` call inside a task: joblib's threads, then, deeper
        down, its sequential backend, as joblib's own backends nest::

            backend.get_nested_backend()  # (ThreadingBackend(...), None)
        """
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def __getstate__(self) -> dict[str, Any]:
        # What a Parallel call holds (its executor, the lock) stays in this process.
        state = self.__dict__.copy()
        for name in ("_executor", "_retired", "_lock", "parallel", "_memmapping", "_mapped"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.parallel = None
        self._executor = None
        self._retired = []
        self._memmapping = None
        self._mapped = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        options = [f"model={self.model!r}"]
        if self.timeout is not None:
            options.append(f"timeout={self.timeout:g}")
        if self.max_tasks_per_child is not None:
            options.append(f"max_tasks_per_child={self.max_tasks_per_child}")
        if self.inner_threads is not None:
            options.append(f"inner_threads={self.inner_threads!r}")
        return f"PickpoolBackend({', '.join(options)})"


def _memmapping(parallel: Any, options: dict[str, Any]) -> Memmapping | None:
    """How a call's large arrays travel to worker processes: by joblib's ``max_nbytes``,
    ``mmap_mode`` and ``temp_folder`` (which Parallel passes on), memory-mapped as loky maps
    them, or pickled (``max_nbytes=None``, or no numpy)."""
    max_nbytes = options.get("max_nbytes")
    if max_nbytes is None:
        return None
    if isinstance(max_nbytes, str):  # ("1M", as Parallel's own default is written)
        max_nbytes = memstr_to_bytes(max_nbytes)
    context = getattr(parallel, "_id", None) or uuid.uuid4().hex
    memmapping = Memmapping(
        max_nbytes, options.get("mmap_mode", "r"), options.get("temp_folder"), context
    )
    return memmapping if memmapping.active else None


# The options of this backend that Parallel(...) may carry for it.
_OPTIONS: Final = frozenset(
    ("model", "timeout", "max_tasks_per_child", "inner_threads", "initializer", "initargs")
)


joblib.register_parallel_backend(_NAME, PickpoolBackend)
# Worker processes import this module too: a task that runs Parallel(backend="pickpool")
# finds the backend there.
_backends.WORKER_IMPORTS.add(__name__)
