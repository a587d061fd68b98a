"""``pickpool.Executor``: the ``concurrent.futures`` interface over pickpool's backends.

Data flow::

    submit(fn, *args) ──► Future, (fn, args, kwargs) ──► _Lane queue ──(feeder thread)──►
        backend.submit(task) ... backend.collect() ──► outcome ──► Future.set_result/exception

Each model the executor uses gets one :class:`_Lane`: a backend and one feeder thread, the only
thread that touches the backend. The feeder hands the backend no more calls than it has
workers, so that a call still in the lane's queue is pending (``cancel()`` works, and
``shutdown(cancel_futures=True)`` cancels it) and one handed over is running. Submitting from
another thread while the feeder waits in ``collect`` wakes it (``Wakeable.wake``).

Under ``model="auto"`` the first call of each distinct function runs alone on threads, timed
(wall and CPU time of the calling thread); then the :class:`_Router` sends that function's
other calls to processes if they compute in Python long enough for a process to pay, and to
threads otherwise. ``Executor.routes`` and the ``pickpool`` logger show each decision.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import itertools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Final, NamedTuple, TypeVar

from . import _backends, _machine
from ._backends import Setup, Wakeable
from ._errors import PickpoolError
from ._inner import InnerThreads, check_inner_threads
from ._log import logger
from ._options import default_workers, positive_int, positive_seconds, worker_options
from ._task import OK, Outcome, chain_remote, expand

T = TypeVar("T")

# The models an Executor runs calls on. Dask and sub-interpreters have executors of their own
# (distributed.Client, concurrent.futures.InterpreterPoolExecutor).
EXECUTOR_MODELS: Final = ("auto", "serial", "threads", "processes", "asyncio")

# Auto: what sends a function's calls to processes, from its first call timed alone: most
# of its time on the calling thread's CPU (pure-Python work, which holds the GIL), and enough
# of it to outweigh pickling and the hand-off (~0.1-0.5 ms).
CPU_BOUND_SHARE: Final = 0.7
PROCESS_WORTH: Final = 0.002


class _Call(NamedTuple):
    """One submitted call, as it travels to a worker."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timed: bool


class _Timing(NamedTuple):
    """A timed call's result, with its wall and thread CPU seconds."""

    result: Any
    wall: float
    cpu: float


def _run_call(call: _Call) -> Any:
    """What a worker runs for a submitted call (a module-level function: it pickles by name)."""
    if not call.timed:
        return _resolved(call.fn(*call.args, **call.kwargs))
    wall, cpu = time.perf_counter(), time.thread_time()
    result = _resolved(call.fn(*call.args, **call.kwargs))
    return _Timing(result, time.perf_counter() - wall, time.thread_time() - cpu)


def _resolved(result: Any) -> Any:
    """An ``async def`` function's coroutine is run to its end: nothing else would await it."""
    if inspect.isawaitable(result):
        import asyncio  # here: `import pickpool` stays light

        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _run_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    """``Executor.map`` with ``chunksize`` > 1: one call runs a chunk of argument tuples."""
    return [_resolved(fn(*args)) for args in chunk]


def _unwrapped(fn: object) -> object:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__func__", inner)  # bound method


def _name(fn: object) -> str:
    inner = _unwrapped(fn)
    module = getattr(inner, "__module__", None) or ""
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name


def _key(fn: object) -> tuple[str, int]:
    """The same key for every call of one function, holding no reference to it."""
    code = getattr(_unwrapped(fn), "__code__", None)
    return (_name(fn), id(code) if code is not None else 0)


_Held = tuple[Future[Any], _Call]


class _Route:
    __slots__ = ("held", "model", "name", "probing", "reason")

    def __init__(self, name: str) -> None:
        self.name = name
        self.model: str | None = None  # None until its first call has been timed
        self.reason = ""
        self.probing = False  # its timed call is running
        self.held: list[_Held] = []  # its calls submitted meanwhile, waiting for the decision


class _Router:
    """Auto's per-function decisions.

    A function's first call runs alone on threads, timed; calls of it submitted meanwhile
    wait (as ``pickpool.map``'s probe makes one call alone first); then ``dispatch`` sends
    them, and every later call, to the model chosen. Holds no reference to the executor
    (``dispatch`` is a weak method) nor to any function.
    """

    def __init__(self, dispatch: Callable[[str, list[_Held], tuple[str, int]], None]) -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, int], _Route] = {}
        self._dispatch = dispatch

    def route(self, fn: object, held: _Held) -> tuple[str, tuple[str, int]] | None:
        """The model for a new call and whether it is timed (model "probe"), or None if the
        call is held until its function's probe ends."""
        key = _key(fn)
        with self._lock:
            route = self._routes.get(key)
            if route is None:
                route = self._routes[key] = _Route(_name(fn))
            if route.model is not None:
                return route.model, key
            if not route.probing:
                route.probing = True
                return "probe", key
            route.held.append(held)
            return None

    def measured(self, key: tuple[str, int], timing: _Timing | None, fn: Any) -> None:
        """A timed call ended (``timing`` None: it raised, and tells nothing)."""
        with self._lock:
            route = self._routes[key]
            if timing is None:
                # The next held call is timed in its place.
                route.probing = bool(route.held)
                held, model = route.held[:1], "probe"
                del route.held[:1]
            else:
                route.model, route.reason = _decide(timing, fn)
                route.probing = False
                held, route.held, model = route.held, [], route.model
        if timing is not None:
            logger.info("auto routes %s to %s: %s", route.name, route.model, route.reason)
        if held:
            self._dispatch(model, held, key)

    def cancel_held(self) -> None:
        with self._lock:
            held = [h for route in self._routes.values() for h in route.held]
            for route in self._routes.values():
                route.held = []
        for future, _ in held:
            future.cancel()

    def routes(self) -> dict[str, str]:
        with self._lock:
            return {r.name: r.model for r in self._routes.values() if r.model is not None}


def _decide(timing: _Timing, fn: Any) -> tuple[str, str]:
    from ._reasons import format_seconds

    wall, cpu = timing.wall, timing.cpu
    share = cpu / wall if wall > 0 else 0.0
    measured = f"its first call took {format_seconds(wall)}, {share:.0%} of it on a CPU"
    if share < CPU_BOUND_SHARE:
        return "threads", f"{measured}: it mostly waits, and threads wait together"
    if cpu < PROCESS_WORTH:
        return "threads", f"{measured}: too short for a process's pickling and hand-off to pay"
    if _machine.cores() < 2:
        return "threads", f"{measured}, but this process has one core: nothing to gain"
    from ._pickling import dumps_function

    try:
        dumps_function(fn)
    except TypeError as exc:
        return "threads", f"{measured}, but it cannot go to a process ({exc})"
    return "processes", f"{measured}: Python computing, which needs a GIL of its own"


_Entry = tuple[Future[Any], _Call, tuple[str, int] | None]


# (Long on purpose: one model's backend fed from submit(), with its feeder thread.)
class _Lane:
    """One backend, fed from a queue of submitted calls by a thread of its own."""

    def __init__(
        self, model: str, setup: Setup, router: _Router | None, on_broken: Callable[[], None]
    ) -> None:
        self.model = model
        self._setup = setup
        self._router = router
        self._cond = threading.Condition()
        # Calls started (their futures running) and not yet handed to the backend, and calls
        # waiting for a free worker (pending: they can still be cancelled).
        self._started: list[_Entry] = []
        self._queue: collections.deque[_Entry] = collections.deque()
        self._running = 0  # calls the backend has, as the feeder last counted them
        self._stopping = False
        self.done = False  # stopped, and its feeder gone or going
        self._waiting = False  # the feeder waits in the backend's collect()
        self._backend: Wakeable | None = None
        self._broken: BaseException | None = None
        self._on_broken = on_broken
        self._ids = itertools.count()
        self.thread = threading.Thread(
            target=self._feed, name=f"pickpool-executor-{model}", daemon=True
        )
        self.thread.start()

    def put(self, future: Future[Any], call: _Call, key: tuple[str, int] | None) -> bool:
        """Queue a call; False if this lane has stopped for good (it takes no more)."""
        with self._cond:
            if self.done:
                return False
            if self._broken is not None:
                raise RuntimeError(f"this executor's {self.model} workers could not start") from (
                    self._broken
                )
            if self._running + len(self._started) < self._setup.workers:
                # A worker is free: the call starts now, as in a standard pool, and a
                # shutdown(cancel_futures=True) right after no longer cancels it.
                future.set_running_or_notify_cancel()
                self._started.append((future, call, key))
            else:
                self._queue.append((future, call, key))
            if self._waiting and self._backend is not None:
                self._backend.wake()
            else:
                self._cond.notify()
        return True

    def stop(self, *, cancel_futures: bool) -> None:
        """Take no more calls; run (or, with ``cancel_futures``, cancel) what is queued."""
        with self._cond:
            self._stopping = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            if self._waiting and self._backend is not None:
                self._backend.wake()
            self._cond.notify()

    # The feeder thread ---------------------------------------------------------------------

    def _feed(self) -> None:
        try:
            backend = _backends.load(self.model)(self._setup)
            if not isinstance(backend, Wakeable):  # every model EXECUTOR_MODELS names is
                raise TypeError(f"model={self.model!r} cannot serve an Executor")
        except BaseException as exc:
            self._break(exc)
            return
        self._backend = backend
        running: dict[int, tuple[Future[Any], tuple[str, int] | None, Any]] = {}
        workers = self._setup.workers
        finished = False
        try:
            while True:
                with self._cond:
                    self._running = len(running)
                    while self._queue and self._running + len(self._started) < workers:
                        if self._queue[0][0].set_running_or_notify_cancel():
                            self._started.append(self._queue.popleft())
                        else:
                            self._queue.popleft()
                    while not self._started and not running and not self._stopping:
                        self._cond.wait()
                    if not self._started and not running and not self._queue:
                        finished = self.done = True
                        break
                    batch, self._started = self._started, []
                    self._running += len(batch)
                    self._waiting = True
                self._send(backend, batch, running)
                del batch  # nothing of a call stays referenced here once it is done
                self._settle(backend.collect(None), running)
                with self._cond:
                    self._waiting = False
        except BaseException as exc:
            for future, _, _ in running.values():
                future.set_exception(exc)
            self._break(exc)
            raise
        finally:
            with self._cond:
                self._waiting = False
                self.done = True
            backend.close(cancel=not finished)

    def _send(
        self,
        backend: Wakeable,
        batch: list[_Entry],
        running: dict[int, tuple[Future[Any], tuple[str, int] | None, Any]],
    ) -> None:
        for future, call, key in batch:
            index = next(self._ids)
            try:
                # One call a task (map's chunks too: one call of _run_chunk): a worker that
                # dies fails it with WorkerCrashed, never with LOST, which only the items of a
                # task of several get, for the driver to run again alone.
                backend.submit((index, index, [call]))
            except TypeError as exc:  # it cannot be pickled for a worker process
                future.set_exception(
                    TypeError(
                        f"cannot send this call of {_name(call.fn)} to a worker process: "
                        f"{exc.__cause__ or exc}. Pass plain data, or use model='threads'"
                    )
                )
                continue
            # The function is kept only for a timed call: auto checks that it pickles.
            running[index] = (future, key, call.fn if call.timed else None)

    def _settle(
        self,
        outcomes: list[Outcome],
        running: dict[int, tuple[Future[Any], tuple[str, int] | None, Any]],
    ) -> None:
        for index, status, value, text in itertools.chain.from_iterable(map(expand, outcomes)):
            future, key, fn = running.pop(index)
            timing = value if status == OK and isinstance(value, _Timing) else None
            if key is not None and fn is not None and self._router is not None:
                self._router.measured(key, timing, fn)
            if status == OK:
                future.set_result(timing.result if timing is not None else value)
            else:
                if isinstance(value, PickpoolError) and _ITEM.search(str(value)):
                    # The backend's words are for pickpool.map's items: here it is a call.
                    value = type(value)(_ITEM.sub("the call", str(value), count=1))
                chain_remote(value, text)
                future.set_exception(value)

    def _break(self, exc: BaseException) -> None:
        """The backend could not start (an initializer raised under serial, say)."""
        with self._cond:
            self._broken = exc
            started, self._started = self._started, []
            queued, self._queue = self._queue, collections.deque()
        for future, _, _ in started:
            future.set_exception(exc)
        for future, _, _ in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
        self._on_broken()


_ITEM: Final = re.compile(r"\bitem \d+")


# Executors whose lanes the interpreter's exit waits for (as concurrent.futures' own do):
# work submitted and never waited for still runs to its end.
_lanes: weakref.WeakSet[_Lane] = weakref.WeakSet()
_exiting = False
_exit_lock = threading.Lock()


def _at_exit() -> None:
    global _exiting
    with _exit_lock:
        _exiting = True
        lanes = list(_lanes)
    for lane in lanes:
        lane.stop(cancel_futures=False)
    for lane in lanes:
        lane.thread.join()


# Before non-daemon threads are joined, while new threads may still start; the same hook the
# standard executors use.
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]


def _call_if_alive(method: weakref.WeakMethod[Callable[..., None]], *args: Any) -> None:
    bound = method()
    if bound is not None:
        bound(*args)


def _stop_lanes(lanes: dict[str, _Lane]) -> None:
    for lane in list(lanes.values()):
        lane.stop(cancel_futures=False)


# (Long on purpose: concurrent.futures.Executor's whole contract, and auto's routes.)
class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on pickpool's models, with its fault handling.

    A drop-in for ``ThreadPoolExecutor`` and ``ProcessPoolExecutor``: ``submit``, ``map``,
    ``shutdown``, ``with``, and futures that work with ``as_completed``, ``wait`` and
    ``loop.run_in_executor``. What it adds:

    * ``model="auto"`` (the default) times the first call of each function alone on threads
      (its other calls wait for it), then sends them to processes if it computes in Python,
      to threads otherwise (see :attr:`routes`). ``"threads"``, ``"processes"``, ``"serial"``
      and ``"asyncio"`` fix the model.
    * Under processes a worker that dies fails only its own future, with
      :class:`~pickpool.WorkerCrashed`, and the executor goes on (no ``BrokenProcessPool``);
      with ``timeout=``, a call that runs longer fails with :class:`~pickpool.TaskTimeout`
      and only its worker is killed. Lambdas and functions of ``__main__`` work.
    * ``map`` reads its input lazily, a few calls ahead of the consumer, so it works on an
      endless iterable in bounded memory.

    Args:
        model: ``"auto"``, ``"threads"``, ``"processes"``, ``"serial"`` or ``"asyncio"``.
        max_workers: workers of each model used (default: as ``pickpool.map`` sizes them).
        initializer: called with ``initargs`` in each new worker before its first call.
        max_tasks_per_child: under processes, a worker runs at most this many calls, then a
            new one replaces it (for C extensions that leak).
        timeout: seconds a call may run; longer, it fails with ``TaskTimeout``.
        inner_threads: native thread pools in calls (see ``pickpool.map``).

    Example::

        with pickpool.Executor() as ex:
            pages = [ex.submit(fetch, url) for url in urls]   # waits: routed to threads
            trees = ex.map(parse, (p.result() for p in pages))  # computes: to processes
    """

    def __init__(
        self,
        model: str = "auto",
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        inner_threads: InnerThreads = None,
    ) -> None:
        if not isinstance(model, str) or model not in EXECUTOR_MODELS:
            hint = ""
            if model == "dask":
                hint = "; distributed.Client is a concurrent.futures executor already"
            elif model == "interpreters":
                hint = "; use concurrent.futures.InterpreterPoolExecutor (Python 3.14)"
            raise ValueError(
                f"model must be one of {', '.join(map(repr, EXECUTOR_MODELS))}, not {model!r}"
                + hint
            )
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        self._workers_setup = worker_options(model, initializer, initargs, max_tasks_per_child)
        self._model = model
        self._max_workers = max_workers
        self._timeout = positive_seconds("timeout", timeout, optional=True)
        self._inner = check_inner_threads(inner_threads)
        self._router: _Router | None = None
        if model == "auto":
            dispatch = weakref.WeakMethod(self._dispatch)
            self._router = _Router(lambda *a: _call_if_alive(dispatch, *a))
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._shutdown = False
        # Collected unshut, it still runs what was submitted, then its workers stop.
        weakref.finalize(self, _stop_lanes, self._lanes)

    @property
    def routes(self) -> dict[str, str]:
        """Under ``model="auto"``: each function routed so far, and the model it runs on.

        ``{"mymodule.parse": "processes", "mymodule.fetch": "threads"}``; the reasons, with
        the times measured, go to the ``pickpool`` logger at INFO.
        """
        return self._router.routes() if self._router is not None else {}

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; a :class:`concurrent.futures.Future` of its result.

        Example::

            future = executor.submit(pow, 2, 8)
            future.result()  # 256
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return self._submit(fn, fn, args, kwargs)

    def _submit(
        self, fn: Callable[..., Any], by: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Submit ``fn``; under auto, route it as the function ``by`` (what map runs per chunk)."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[Any] = Future()
            call = _Call(fn, args, kwargs, False)
            if self._router is None:
                self._put(self._model, future, call, None)
                return future
            routed = self._router.route(by, (future, call))
            if routed is not None:
                model, key = routed
                if model == "probe":
                    self._put("threads", future, call._replace(timed=True), key)
                else:
                    self._put(model, future, call, None)
            return future

    def _put(
        self, model: str, future: Future[Any], call: _Call, key: tuple[str, int] | None
    ) -> None:
        """Queue a call on ``model``'s lane (holding ``_lock``)."""
        while not self._lane(model).put(future, call, key):
            # Its lane stopped after a shutdown, before auto routed these calls to it.
            del self._lanes[model]

    def _dispatch(self, model: str, held: list[_Held], key: tuple[str, int]) -> None:
        """Send calls that waited for their function's probe (from a lane's feeder thread)."""
        with self._lock:
            timed = model == "probe"
            model = "threads" if timed else model
            for future, call in held:
                self._put(model, future, call._replace(timed=timed), key if timed else None)
            if self._shutdown:
                self._lanes[model].stop(cancel_futures=False)

    def _lane(self, model: str) -> _Lane:
        lane = self._lanes.get(model)
        if lane is None:
            workers = self._max_workers or default_workers(model, is_async=False)
            workers_setup = dict(self._workers_setup)
            if not _backends.traits(model).recycles:  # auto's threads: for worker processes
                workers_setup["max_tasks_per_child"] = None
            setup = Setup(
                _run_call,
                workers,
                is_async=False,
                timeout=self._timeout,
                fresh=True,  # an executor's workers are its own, as the standard ones are
                inner_threads=self._inner,
                **workers_setup,
            )
            lane = self._lanes[model] = _Lane(model, setup, self._router, self._broken)
            with _exit_lock:
                _lanes.add(lane)
        return lane

    def _broken(self) -> None:
        if logger.isEnabledFor(logging.WARNING):
            logger.warning("an executor's workers could not start; its calls fail")

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like :func:`map`, run on the executor: results in order, as a lazy iterator.

        The input is read lazily, at most ``buffersize`` calls ahead of the consumer (default:
        4 per worker), so an endless iterable works in bounded memory. ``timeout`` counts from
        this call, as in ``concurrent.futures``; ``chunksize`` > 1 sends calls in chunks.

        Example::

            list(executor.map(pow, [2, 3], [5, 2]))  # [32, 9]
        """
        size = positive_int("chunksize", chunksize) or 1
        ahead = positive_int("buffersize", buffersize)
        if ahead is None:
            ahead = 4 * (self._max_workers or default_workers("threads", is_async=False))
        end = None if timeout is None else timeout + time.monotonic()
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        if size > 1:
            chunks = iter(lambda: list(itertools.islice(calls, size)), [])

            def submit_next() -> Future[Any] | None:
                chunk = next(chunks, None)
                return None if chunk is None else self._submit(_run_chunk, fn, (fn, chunk), {})
        else:

            def submit_next() -> Future[Any] | None:
                args = next(calls, None)
                return None if args is None else self._submit(fn, fn, args, {})

        futures: collections.deque[Future[Any]] = collections.deque()
        while len(futures) < ahead:
            future = submit_next()
            if future is None:
                break
            futures.append(future)
        return _results(futures, submit_next, end, chunked=size > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls, and stop the workers once what was submitted is done.

        ``cancel_futures=True`` cancels the calls that have not started. ``wait=True`` returns
        once every worker has stopped.
        """
        with self._lock:
            self._shutdown = True
            lanes = list(self._lanes.values())
        if cancel_futures and self._router is not None:
            self._router.cancel_held()
        for lane in lanes:
            lane.stop(cancel_futures=cancel_futures)
        joined: set[int] = set()
        while wait:
            # A probe that ends may send its function's held calls to a lane started since.
            with self._lock:
                lanes = [lane for lane in self._lanes.values() if id(lane) not in joined]
            if not lanes:
                break
            for lane in lanes:
                lane.stop(cancel_futures=cancel_futures)
                lane.thread.join()
                joined.add(id(lane))

    def __repr__(self) -> str:
        lanes = ", ".join(self._lanes) or "none started"
        state = "shut down" if self._shutdown else "running"
        return f"<pickpool.Executor model={self._model!r} ({state}; workers: {lanes})>"


def _results(
    futures: collections.deque[Future[Any]],
    submit_next: Callable[[], Future[Any] | None],
    end: float | None,
    *,
    chunked: bool,
) -> Iterator[Any]:
    """Yield ``futures``' results in order, topping the buffer up as each is taken."""
    try:
        while futures:
            if (future := submit_next()) is not None:
                futures.append(future)
            del future
            # The future is passed, not bound to a name of this generator, and the result
            # yielded as it comes: once the consumer lets go of it, nothing here keeps it.
            if chunked:
                yield from _result_or_cancel(futures.popleft(), end)
            else:
                yield _result_or_cancel(futures.popleft(), end)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[T], end: float | None) -> T:
    try:
        try:
            return future.result(None if end is None else end - time.monotonic())
        finally:
            future.cancel()
    finally:
        del future
