"""Items as tasks of an event loop: :class:`ItemRunner`, shared by the asyncio model's own loop
and by ``amap`` on the caller's loop.

``async def`` functions are awaited on the loop, at most ``workers`` at a time. A plain
function runs through ``asyncio.to_thread``-style calls on a pool of ``workers`` daemon threads
(:class:`DaemonThreads`), as the usual advice for mixing blocking code into async code. A
``timeout`` cancels the await; a plain function's thread cannot be stopped and finishes in
the background. Calls that wait on a far side with a finite capacity follow a latency-driven
limit (``_limits.Limiter``), started paced.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from .. import _native
from .._errors import TaskTimeout
from .._limits import Limiter
from .._pace import Pacer
from .._task import (
    BLOCK,
    ERROR,
    OK,
    Outcome,
    Task,
    closing,
    failed,
    format_traceback,
    release_state,
    release_state_here,
)
from . import Setup
from ._threads import CANCEL_GRACE

T = TypeVar("T")


# A loop's timers fire to the millisecond (epoll's timeout is in whole milliseconds).
TIMER_GRANULARITY = 1e-3


# (Long on purpose: a loop's items: limit, pace, timeouts, outcomes.)
class ItemRunner:
    """Runs items as tasks on the current event loop and reports each outcome to ``emit``."""

    def __init__(
        self, setup: Setup, emit: Callable[[list[Outcome]], None], *, cap_inner: bool = True
    ) -> None:
        self._setup = setup
        self._emit = emit
        # Items wait here, not as tasks blocked on a semaphore: a task is made only when one
        # of the ``workers`` places is free, which halves the loop's work per item.
        self._waiting: collections.deque[tuple[int, Any]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[Outcome] = []  # reported together, once per turn of the loop
        self._abandoned = False  # a plain function's thread overran its timeout
        self.executor: DaemonThreads | None = None
        if not setup.is_async:
            self.executor = DaemonThreads(
                setup.workers, on_exit=functools.partial(release_state_here, setup.fn)
            )
        # A plain function's calls run side by side in threads, sharing the cores with their
        # native pools; coroutines compute one at a time on the loop's thread.
        # (Capped from the caller's thread: OpenBLAS ignores a size set from another thread
        # once the main thread has set one; ``cap_inner=False`` when the caller capped.)
        self._inner = _native.Held(inner_limit(setup) if cap_inner else None)
        # Calls that wait on a far side with a finite capacity (auto gives their no-load
        # latency): as under threads, at most ``limit`` at once, moved by their latency and
        # failures, and started paced. Otherwise every one of the ``workers`` places is used.
        self.limiter: Limiter | None = None
        # The run's max_rate paces every start here, where calls start (a coroutine that
        # blocks the loop holds up what waits, which would then start all at once).
        self._pacer: Pacer | None = setup.pacer
        self._limit = setup.workers
        climb = setup.climb
        if climb is not None and climb.latency is not None:
            self.limiter = Limiter(climb.start, setup.workers, climb.latency)
            self._limit = self.limiter.limit
            self._pacer = Pacer(self.limiter.pace)
        # Running: when each started, oldest first (as they were added), as the limiter reads.
        self._began: dict[asyncio.Task[None], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._look: asyncio.TimerHandle | None = None  # the next look for a stuck call
        self.peak = 0  # the most calls that ran at once

    def start(self, task: Task) -> None:
        self._waiting.extend(enumerate(task[2], task[1]))
        self._fill()

    def _fill(self) -> None:
        loop, tasks, waiting = asyncio.get_running_loop(), self._tasks, self._waiting
        limiter, pacer = self.limiter, self._pacer
        while waiting and len(tasks) < self._limit:
            if pacer is not None:
                # Its start is taken if it is now, or due within what a loop's timer can tell
                # apart: started now. Starts due within one millisecond go together, the pace
                # holds over longer spans (a timer per start would cap the starts at one a
                # millisecond, and so the calls in flight at latency / 1 ms).
                delay = pacer.take(TIMER_GRANULARITY)
                if delay > 0:
                    if self._timer is None:
                        self._timer = loop.call_later(delay, self._paced_fill)
                    return
            t = loop.create_task(self._one(*waiting.popleft()))
            tasks.add(t)
            self.peak = max(self.peak, len(tasks))
            t.add_done_callback(self._finish)
            if limiter is not None:
                self._began[t] = time.monotonic()
                limiter.saw(len(tasks))
        self._watch()

    def _watch(self) -> None:
        """Under the limiter: look at the oldest call when it would count as stuck, since
        stuck calls (connections a far side dropped) complete nothing to be judged by."""
        if self.limiter is None or self._look is not None or not self._tasks:
            return
        wait = self.limiter.next_look(self._began.values())
        # (None: the calls running started before the last cut; look again in a stuck time.)
        wait = self.limiter.stuck_after if wait is None else wait
        self._look = asyncio.get_running_loop().call_later(wait, self._looked)

    def _looked(self) -> None:
        self._look = None
        assert self.limiter is not None
        assert self._pacer is not None
        if self.limiter.completed([], self._began.values()):
            self._limit = self.limiter.limit
            self._pacer.interval = self.limiter.pace
        self._watch()

    def _paced_fill(self) -> None:
        self._timer = None
        self._fill()

    def _finish(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._began.pop(task, None)  # (a cancelled one's; _one took its own)
        if self._waiting:
            self._fill()
        elif not self._tasks and self._look is not None:
            self._look.cancel()
            self._look = None

    def _judge(self, outcome: Outcome) -> float:
        """Under the limiter: the current task's call ended with ``outcome``; move the limit
        by its latency and whether it failed (before ``_finish`` fills the places). Seconds
        the call's place is then held (see ``Limiter.hold``)."""
        assert self.limiter is not None
        assert self._pacer is not None
        current = asyncio.current_task()
        began = self._began.pop(current, None) if current is not None else None
        if began is None:
            return 0.0
        sample = (began, time.monotonic() - began, int(outcome[1] != OK), 1)
        self.limiter.completed([sample], self._began.values())
        self._limit = self.limiter.limit
        self._pacer.interval = self.limiter.pace  # (its no-load latency may have moved too)
        return self.limiter.hold(sample[1], bool(sample[2]))

    async def release(self) -> None:
        """The run is over: close the state an ``async def`` made on this loop under
        ``worker_state`` (a plain function's are closed by the threads that made them)."""
        if self._setup.is_async:
            pending = release_state(self._setup.fn)
            if pending is not None:
                await closing(pending)

    async def cancel(self) -> None:
        """Cancel every item still running and wait for their ``finally`` blocks."""
        self._waiting.clear()
        for handle in (self._timer, self._look):
            if handle is not None:
                handle.cancel()
        self._timer = self._look = None
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def shutdown_executor(self, *, cancel: bool = False, release: bool = True) -> None:
        """Drop queued calls; wait for running ones unless one overran its timeout.

        A thread cannot be stopped: a call that is running is waited for, as any thread pool
        does, except after a timeout, when the stuck thread is left to finish in the background,
        and for at most :data:`CANCEL_GRACE` seconds when the run stops early.
        """
        if self.executor is not None:
            self.executor.shutdown(
                wait=not self._abandoned,
                cancel_futures=True,
                grace=CANCEL_GRACE if cancel else None,
            )
        if release:
            self._inner.close()

    async def ashutdown_executor(self, *, cancel: bool = False) -> None:
        """:meth:`shutdown_executor` without blocking the event loop while it waits."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            if not self._abandoned:
                await asyncio.to_thread(self.shutdown_executor, cancel=cancel, release=False)
        # Released here, on the loop's thread, which held it (OpenMP's size is per thread).
        self._inner.close()

    async def _one(self, index: int, item: Any) -> None:
        limit = self._setup.timeout
        try:
            if limit is None:
                outcome: Outcome = (index, OK, await self._call(item), None)
            else:
                outcome = await self._call_with_timeout(index, item, limit)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this item's task is being cancelled (the run stops)
            outcome = failed(index, exc)  # the function's own CancelledError: its outcome
        except BaseException as exc:
            outcome = failed(index, exc)
        if type(outcome[2]) is _Raised:
            outcome = failed(index, outcome[2].exc)
        hold = self._judge(outcome) if self.limiter is not None else 0.0
        if not self._finished:
            asyncio.get_running_loop().call_soon(self._report)
        self._finished.append(outcome)
        if hold:
            await asyncio.sleep(hold)  # (its place is held until this task ends: Limiter.hold)

    def _report(self) -> None:
        """Hand over what finished in this turn of the loop: one wake-up of the driver, and
        consecutive results as blocks rather than one outcome each."""
        finished, self._finished = self._finished, []
        finished.sort(key=_index)
        outcomes: list[Outcome] = []
        for outcome in finished:
            index, status, value, _ = outcome
            if status == OK:
                if outcomes and outcomes[-1][1] == BLOCK:
                    first, _, values, _ = outcomes[-1]
                    if first + len(values) == index:
                        values.append(value)
                        continue
                outcomes.append((index, BLOCK, [value], None))
            else:
                outcomes.append(outcome)
        self._emit(outcomes)

    async def _call_with_timeout(self, index: int, item: Any, limit: float) -> Outcome:
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                value = await self._call(item)
        except TimeoutError:
            if not deadline.expired():
                raise  # the function's own TimeoutError, not ours
            self._abandoned = self.executor is not None
            exc = TaskTimeout(f"item {index} ran longer than timeout={limit:g}s and was cancelled")
            return (index, ERROR, exc, format_traceback(exc))
        return (index, OK, value, None)

    async def _call(self, item: Any) -> Any:
        if self._setup.is_async:
            return await self._setup.fn(item)
        # asyncio.to_thread, on our own executor so that `workers` bounds the threads.
        call = functools.partial(
            contextvars.copy_context().run, _call_in_thread, self._setup.fn, item
        )
        result = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        if inspect.isawaitable(result):
            result = await result
        return result


class _Raised:
    """A StopIteration raised in a thread: an asyncio future refuses to carry one, and a
    coroutine that raised it would have Python turn it into a RuntimeError (PEP 479)."""

    __slots__ = ("exc",)

    def __init__(self, exc: StopIteration) -> None:
        self.exc = exc


def _call_in_thread(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except StopIteration as exc:
        return _Raised(exc)


def _index(outcome: Outcome) -> int:
    return outcome[0]


def inner_limit(setup: Setup) -> int | None:
    """The cap on native pools while this model runs: a plain function's calls run side by
    side in threads, while coroutines compute one at a time on the loop's thread."""
    return _native.limit_for(setup.inner_threads, 1 if setup.is_async else setup.workers)


class DaemonThreads(Executor):
    """``workers`` daemon threads behind the ``Executor`` interface, for ``run_in_executor``.

    Not ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one call
    stuck past a timeout or a Ctrl-C would hold the whole program open until it returned.
    """

    def __init__(self, workers: int, on_exit: Callable[[], None] | None = None) -> None:
        self._workers = workers
        self._on_exit = on_exit  # called in each thread as it ends (a worker's state closed)
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
            if self._idle == 0 and len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name="pickpool-async", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        return future

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, grace: float | None = None
    ) -> None:
        with self._lock:
            already, self._shutdown = self._shutdown, True
            threads = list(self._threads)
        if not already:
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            for _ in threads:
                self._jobs.put(None)
        if wait:
            deadline = None if grace is None else time.monotonic() + grace
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if future.set_running_or_notify_cancel():
                _native.caps.refresh()  # pools that the last call's imports loaded
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1
        if self._on_exit is not None:
            self._on_exit()
        _native.caps.leave_thread()
