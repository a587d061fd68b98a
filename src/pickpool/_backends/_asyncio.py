"""``model="asyncio"``: one event loop running many items at once.

``async def`` functions are awaited on the loop, at most ``workers`` at a time; a plain
function runs on the loop's pool of threads, as ``asyncio.to_thread`` would run it (see
``_loop``). From ``map``/``imap`` the loop runs in a thread of its own
(:class:`AsyncioBackend`); from ``await amap(...)`` the same runner runs on the caller's own
loop (the model's ``loop_runner``).

asyncio itself is imported only when the model runs: ``import pickpool`` and the cost model's
prediction (here too) need none of it.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .. import _native
from .._costs import LOOP_BLOCKED, THREAD_START, Costs, Option, better, thread_counts
from .._task import Outcome, Task, outcome_count, run_initializer
from . import Model, Setup, Traits, coroutines
from ._threads import CANCEL_GRACE

if TYPE_CHECKING:
    import asyncio

    from ._loop import ItemRunner


class AsyncioBackend:
    """An :class:`ItemRunner` on a fresh event loop in a thread of its own."""

    def __init__(self, setup: Setup) -> None:
        self._closed = True  # until built: close() after a failed __init__ has nothing to do
        # One event loop is the one worker: its initializer runs once, here, and what it
        # raises is raised.
        error = run_initializer(setup.initializer, setup.initargs)
        if error is not None:
            raise error
        import asyncio

        from ._loop import inner_limit

        self._inner = _native.Held(inner_limit(setup))
        self._outbox: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        self._in_flight = 0
        self._runner: ItemRunner | None = None
        self._lock = threading.Lock()
        self._submitted: list[Task] = []
        self._cancelling = False
        self._start_error: list[BaseException] = []  # what the loop's thread raised
        started = threading.Event()
        self._loop: asyncio.AbstractEventLoop
        try:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._run_loop, args=(setup, started), name="pickpool-asyncio", daemon=True
            )
            try:
                self._thread.start()
            except BaseException:
                self._loop.close()
                raise
            started.wait()
            if self._start_error:
                self._thread.join()  # (it has closed its loop)
                raise self._start_error[0]
        except BaseException:
            self._inner.close()
            raise
        self._closed = False

    def submit(self, task: Task) -> None:
        self._in_flight += len(task[2])
        # Waking the loop costs a write to its self-pipe (~50 µs with the GIL's hand-off):
        # tasks submitted before it wakes up go over together.
        with self._lock:
            self._submitted.append(task)
            if len(self._submitted) > 1:
                return
        self._loop.call_soon_threadsafe(self._start_submitted)

    def _start_submitted(self) -> None:
        assert self._runner is not None
        with self._lock:
            tasks, self._submitted = self._submitted, []
        for task in tasks:
            self._runner.start(task)

    def collect(self, timeout: float | None) -> list[Outcome]:
        if self._in_flight == 0:
            return []
        try:
            outcomes = list(self._outbox.get(timeout=timeout))
        except queue.Empty:
            return []
        while True:
            try:
                outcomes += self._outbox.get_nowait()
            except queue.Empty:
                break
        self._in_flight -= outcome_count(outcomes)
        return outcomes

    def wake(self) -> None:
        self._outbox.put([])

    @property
    def peak(self) -> int:
        """The most calls that ran at once on the loop."""
        return 0 if self._runner is None else self._runner.peak

    def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancelling = cancel
        self._loop.call_soon_threadsafe(self._loop.stop)
        # The loop's thread cleans up after itself (see _run_loop). Stopping early, it gets a
        # grace period: a coroutine that blocks the loop (time.sleep in async def) cannot be
        # interrupted, and the daemon thread finishes on its own once it returns.
        self._thread.join(CANCEL_GRACE if cancel else None)
        self._inner.close()

    def __repr__(self) -> str:
        return f"<AsyncioBackend {self._in_flight} items in flight>"

    def _run_loop(self, setup: Setup, started: threading.Event) -> None:
        import asyncio

        from ._loop import ItemRunner

        asyncio.set_event_loop(self._loop)
        try:
            try:
                self._runner = runner = ItemRunner(setup, self._outbox.put, cap_inner=False)
            except BaseException as exc:
                self._start_error.append(exc)  # raised by __init__, in the caller's thread
                return
            self._loop.call_soon(started.set)
            self._loop.run_forever()
            # Stopped by close(): cancel what still runs, let its finally blocks run.
            self._loop.run_until_complete(runner.cancel())
            runner.shutdown_executor(cancel=self._cancelling)
            self._loop.run_until_complete(runner.release())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            started.set()  # never leave __init__ waiting, even if the runner failed to start
            asyncio.set_event_loop(None)
            self._loop.close()


def loop_runner(setup: Setup, emit: Callable[[list[Outcome]], None]) -> ItemRunner:
    """The runner of items on the current event loop (``amap``'s, on the caller's loop)."""
    from ._loop import ItemRunner

    return ItemRunner(setup, emit)


# The cost model's view of one event loop: a task's cost on the loop with its bookkeeping,
# the loop's start, the most coroutines worth predicting, and a plain function's trip from
# the loop to a thread and back.
ASYNC_ITEM: Final = 8e-6
LOOP_START: Final = 1e-3
MAX_COROUTINES: Final = 100_000
TO_THREAD_ITEM: Final = 60e-6


def predict(costs: Costs) -> Option:
    """One event loop: coroutines overlap their waits while what each blocks the loop for adds
    up; a plain function runs on the loop's threads, as under threads."""
    ev, cores = costs.ev, costs.m.cores
    best: Option | None = None
    if ev.is_async:
        blocks = ev.cpu if ev.loop_cpu is None else ev.loop_cpu  # (on one shared loop)
        if ev.loop_blocked is not None and ev.loop_blocked >= LOOP_BLOCKED:
            # It blocks the loop (time.sleep, computing): for as long as that share says.
            # Below it, the together phase's slowdown is mostly the far side's (a server
            # under load), and what a coroutine costs the loop is its own CPU time.
            blocks = max(blocks, ev.loop_blocked * ev.wall)
        # Little's law: enough coroutines waiting that the loop is never idle while one
        # of them is away, twice over; bounded, since each costs ~1 kB while it waits.
        little = min(MAX_COROUTINES, costs.n, math.ceil(2 * ev.wall / (blocks + ASYNC_ITEM)))
        # What it asks of the cores beyond the loop: its native threads', its children's.
        elsewhere = max(0.0, (ev.process_cpu or 0.0) - ev.cpu) + ev.child_cpu
        for k in costs.counts({little}):
            per = max(
                ev.wall / k,
                costs.one_core(blocks) + ASYNC_ITEM,
                costs.on_cores(blocks + elsewhere, ev.wall, k),
            )
            best = better(best, Option(MODEL.name, k, 1, LOOP_START + costs.n * per, per))
    else:
        for k in costs.counts(thread_counts(cores)):
            view = costs.view(k)
            per = max(
                costs.stretch(view) / k,
                costs.computing(view, k),
                costs.one_core(view.g) + TO_THREAD_ITEM,
                view.floor,
                costs.as_measured(k),
                costs.past_the_knee(k),
            )
            seconds = LOOP_START + k * THREAD_START + costs.n * per
            best = better(best, Option(MODEL.name, k, 1, seconds, per, view.inner))
    assert best is not None
    return best


MODEL = Model(
    "asyncio",
    Traits(
        coroutines,
        hops=True,
        paces_starts=True,
        climbs="coroutines",
        plain_on_threads=True,
        shares_memory=True,
        rank=(2, 1),
        unit="coroutine",
    ),
    AsyncioBackend,
    predict=predict,
    loop_runner=loop_runner,
)
