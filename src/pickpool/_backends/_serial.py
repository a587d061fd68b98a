"""``model="serial"``: the plain loop, in the caller's thread, one item at a time."""

from __future__ import annotations

from collections import deque
from typing import Final

from .. import _chunks, _native
from .._costs import Costs, Option
from .._task import Caller, Outcome, Task, run_initializer
from . import THREADS, Model, Setup, Traits, one

# The loop's own bookkeeping per item beyond calling the function, and per chunk (a chunk's
# results handed out as one block). Measured with a function that adds one (`benchmarks/
# overhead.py`): a chunk of one item costs ~7 µs, a chunk of thousands ~0.03 µs an item.
SERIAL_ITEM: Final = 0.03e-6
SERIAL_CHUNK: Final = 7e-6


class SerialBackend:
    """Runs each task in the caller's thread when the driver collects it, so nothing runs ahead.

    It also offers its :class:`Caller` as ``inline``: the driver then runs the plain loop
    itself, skipping the scheduler.
    """

    def __init__(self, setup: Setup) -> None:
        self._closed = True  # until built: close() after a failed __init__ has nothing to do
        # The one worker is this thread: its initializer runs here, and what it raises is
        # raised, as a plain program's set-up would.
        error = run_initializer(setup.initializer, setup.initargs)
        if error is not None:
            raise error
        self._caller = Caller(setup.fn)
        self._queue: deque[Task] = deque()
        # One call at a time may use every core: native pools are capped only when asked to,
        # and then each task first caps the pools the last one's imports loaded.
        limit = _native.limit_for(setup.inner_threads, 1)
        self._inner = _native.Held(limit)
        self.inline = self._caller if limit is None else None
        self._closed = False

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def collect(self, timeout: float | None) -> list[Outcome]:
        if not self._queue:
            return []
        _native.caps.refresh()
        return self._caller.run(self._queue.popleft())

    def wake(self) -> None:
        """Nothing to do: collect() never waits."""

    def close(self, *, cancel: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._caller.close()
        self._inner.close()

    def __repr__(self) -> str:
        return f"<SerialBackend {len(self._queue)} queued>"


def predict(costs: Costs) -> Option:
    """A plain loop: each call's own time, one after the other, in chunks as a run's loop
    grows them (a chunk of about ``_chunks.INLINE_SECONDS`` of calls)."""
    view = costs.view(1)
    ch = costs.chunk(1, _chunks.INLINE_SECONDS)
    if costs.chunksize is None:
        ch = min(ch, _chunks.INLINE_MAX)
    # (Beside other programs' computing, the loop's share of the cores stretches its calls.)
    wall = max(costs.stretch(view), costs.computing(view, 1))
    per = wall + SERIAL_ITEM + SERIAL_CHUNK / ch + costs.coroutine_call()
    return Option(MODEL.name, 1, ch, costs.n * per, per, view.inner)


MODEL = Model(
    "serial",
    Traits(
        one, inline=True, with_timeout=THREADS, shares_memory=True, worker_globals=True, rank=(0, 0)
    ),
    SerialBackend,
    predict=predict,
)
