"""The one run loop, the same for every model.

:class:`Schedule` is the bookkeeping, free of I/O and clocks: it reads the input lazily, cuts it
into chunks, keeps a bounded window of items in flight, puts outcomes back in input order (or
not), decides retries (by :func:`judge`, which the serial loop follows too), and has the items
of a chunk that died with its worker run again one by one. :func:`drive` (sync) and
``_aio.adrive`` (on the caller's event loop) move tasks and outcomes between it and a backend,
and always close the backend: normally when the input is done, with ``cancel=True`` on any
exception, on ``break`` in an ``imap`` loop, or when the consumer's generator is
garbage-collected.

Where this loop sits in a call (the API's checks above it, auto's probe and decision beside
it, the backends below it) is drawn in ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, overload

from . import _log
from ._backends import Backend, Inline, Setup
from ._errors import TaskTimeout, WorkerCrashed
from ._pace import Pacer
from ._task import BLOCK, ERROR, FATAL, LOST, OK, Caller, Outcome, Task, expand, failed


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the driver needs to know, already checked and defaulted by ``_api``."""

    model: str  # the backend that runs it
    workers: int
    chunksize: int  # the first chunks' size; the size of every chunk unless ``adaptive``
    window: int  # items submitted but not yet handed to the consumer, at most
    ordered: bool
    timeout: float | None
    retries: int
    fail_fast: bool  # on_error="raise": start nothing after the first final failure
    # Resize chunks to the measured pace (see :class:`Chunking`); the input's length, if known.
    adaptive: bool = False
    length: int | None = None
    # Seconds before a failed item's first retry, doubled for each next one, drawn at random
    # from [0, that] ("full jitter"), so that retries of calls that failed together spread out.
    backoff: float = 0.0
    # ``max_rate``: calls start evenly spaced, at most this many a second (retries included),
    # shared by every phase of the run. The window is then the workers: what is sent starts.
    pacer: Pacer | None = None
    # The model's chunks are hops: their items run concurrently where they land (asyncio's
    # loop), so chunks are sized per hop and one window serves all workers.
    hops: bool = False


# The longest wait before a retry, however many came before it.
MAX_BACKOFF: Final = 30.0


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before try number ``attempt`` (2 for the first retry): full jitter."""
    if backoff <= 0:
        return 0.0
    return random.uniform(0.0, min(MAX_BACKOFF, backoff * 2 ** min(attempt - 2, 40)))


@dataclass(slots=True)
class Done:
    """One item's final outcome, as the driver hands it to the API layer.

    Not frozen: one is made per item, and a frozen dataclass's ``__init__`` costs 3x more.
    """

    index: int
    item: Any
    status: int
    value: Any  # the result, or the exception
    traceback: str | None
    attempts: int


def judge(
    plan: Plan, index: int, item: Any, status: int, value: Any, text: str | None, tries: int
) -> Done | float:
    """The run's rules for item ``index``'s outcome after ``tries`` tries: its final
    :class:`Done`, or the seconds to wait before it is tried again (a retry, logged).

    The one rule book of :meth:`Schedule.accept` and the serial loop: a ``FATAL`` outcome is
    raised, a crash or a timeout is logged, a failure is retried while ``plan.retries`` allow.
    """
    if status == FATAL:
        raise value
    if status == ERROR:
        if isinstance(value, (TaskTimeout, WorkerCrashed)):
            _log.failed_hard(index, value)
        if tries <= plan.retries:
            delay = backoff_delay(plan.backoff, tries + 1)
            _log.retrying(index, tries, plan.retries, value, delay)
            return delay
    return Done(index, item, status, value, text, tries)


def ends_run(plan: Plan, done: Done) -> bool:
    """Whether nothing after ``done``'s item may start any more: under ``on_error="raise"``,
    a final failure ends the run, as it ends a plain loop (the items before it still run)."""
    return plan.fail_fast and done.status == ERROR


@dataclass(slots=True)
class Block:
    """The results of consecutive items from ``index`` on, each of which worked at its first try.

    Handed out instead of one :class:`Done` per item when the consumer asks for blocks: the
    common case then costs the driver a few operations per chunk rather than per item.
    """

    index: int
    values: list[Any]


class Cancelled(Exception):
    """The caller asked the run to stop (``amap``'s task was cancelled)."""


# Adaptive chunks: how long a worker's chunk should take (long enough to hide the hand-off,
# ~0.1 ms for threads and processes, short enough that every worker is busy until near the
# end), and the largest chunk.
CHUNK_SECONDS: Final = 0.005
# An asyncio chunk is only a hop between threads, its items run concurrently: hop this often.
HOP_SECONDS: Final = 0.001
MAX_HOP: Final = 256
MAX_CHUNK: Final = 8192
# Near the end, chunks shrink so that the last round splits over every worker at least twice.
TAIL_SPLIT: Final = 2


class Chunking:
    """The next chunk's size: fixed, or fitted to the measured pace, and smaller at the tail.

    The pace is measured where it is felt, in items handed back per second over the last
    stretch of the run, so it includes every overhead, start-up and consumer alike; each chunk
    then aims at :data:`CHUNK_SECONDS` of one worker's time. A size at most doubles per step,
    so one fast chunk cannot make the next enormous; it shrinks at once when the pace drops.
    (joblib's auto batching aims at batches of 0.2-2 s.) Chunks of a few milliseconds keep
    every worker busy to the end and still hide a hand-off of ~0.1 ms.
    """

    __slots__ = ("_began", "_done", "_hops", "_plan", "_rate", "size")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._hops = plan.hops
        self.size = plan.chunksize
        self._began = 0.0
        self._done = 0
        self._rate = 0.0  # items per second, smoothed

    def started(self) -> None:
        if not self._began:
            self._began = time.perf_counter()

    def finished(self, count: int) -> None:
        """``count`` more items came back: update the pace and the chunk size."""
        plan = self._plan
        if not plan.adaptive or not count:
            return
        self._done += count
        now = time.perf_counter()
        elapsed = now - self._began
        # Judge over a few chunks' worth, not one outcome: outcomes of threads come singly.
        if elapsed < 2 * CHUNK_SECONDS:
            return
        rate = self._done / elapsed
        self._rate = rate if not self._rate else 0.5 * (self._rate + rate)
        self._began, self._done = now, 0
        if self._hops:
            ideal = min(MAX_HOP, self._rate * HOP_SECONDS)
        else:
            ideal = self._rate * CHUNK_SECONDS / plan.workers
        self.size = max(1, min(MAX_CHUNK, 2 * self.size, round(ideal)))

    def next(self, taken: int) -> int:
        """The size of the next chunk, ``taken`` items having been read so far."""
        size = self.size
        length = self._plan.length
        # (Hops need no split at the tail: their items all wait in one place, for the next
        # free coroutine, whichever hop brought them.)
        if length is not None and self._plan.adaptive and not self._hops:
            left = length - taken
            size = min(size, max(1, -(-left // (TAIL_SPLIT * self._plan.workers))))
        return size


# (Long on purpose: the run's bookkeeping: window, chunks, order, retries, fail-fast.)
class Schedule:
    """What to submit next and what to hand out, given the outcomes so far.

    ``blocks``: hand out a :class:`Block` for consecutive results that all worked at the first
    try; otherwise one :class:`Done` per item.
    """

    def __init__(
        self, items: Iterable[Any], plan: Plan, *, start: int = 0, blocks: bool = False
    ) -> None:
        # ``start``: the index of the first item, when an earlier run already took the ones
        # before it (``model="auto"`` continues where its probe stopped).
        self._source = iter(items)
        self._plan = plan
        self._blocks = blocks
        self._start = start
        self._next_in = start  # the index of the next item read
        self._outstanding: dict[int, Any] = {}  # index -> item: submitted, not yet handed out
        self._attempts: dict[int, int] = {}  # only items tried more than once
        self._buffer: dict[int, Done | Block] = {}  # ordered: finished, waiting for earlier
        self._next_out = start
        self._next_task = 0
        self._exhausted = False
        self._failed_at: int | None = None
        # What the input raised, if it did: raised once every item read before it is out.
        self._source_error: Exception | None = None
        self._result_bytes = 0.0  # the size of one result, estimated from samples
        self.chunking = Chunking(plan)
        self._hops = plan.hops

    @property
    def over(self) -> bool:
        """The failure that ends the run is handed out: the run ends there, what runs is
        abandoned."""
        return self._failed_at is not None and self._next_out > self._failed_at

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing left to submit, or the run's failure handed out."""
        return self.over or (
            not self._outstanding and (self._exhausted or self._failed_at is not None)
        )

    def tasks(self, most: int | None = None) -> list[Task]:
        """Chunks to submit now: as many as the window has room for (at most ``most``)."""
        tasks: list[Task] = []
        outstanding = self._outstanding
        while len(tasks) != most and (room := self._room()):
            chunk = take(self._source, room, self)
            if not chunk:
                self._exhausted = True
                break
            first = self._next_in
            self._next_in += len(chunk)
            outstanding.update(zip(range(first, self._next_in), chunk, strict=True))
            tasks.append(self._task(first, chunk))
        if tasks:
            self.chunking.started()
        return tasks

    def has_room(self) -> bool:
        """Whether :meth:`tasks` would give a chunk now (unless the input turns out empty)."""
        return self._room() > 0

    def _room(self) -> int:
        """How many items the next chunk takes, or 0 if none is to be sent now."""
        if self._exhausted or self._failed_at is not None:
            return 0
        size = self.chunking.next(self._next_in - self._start)
        window = self._window(size)
        room = window - len(self._outstanding)
        return 0 if room < min(size, window) else min(size, room)

    def _window(self, size: int) -> int:
        """Items in flight at most, with chunks of ``size``."""
        plan = self._plan
        # The window holds a few chunks per worker, whatever size chunks have grown to
        # (asyncio's workers are coroutines, fed by hops, not chunks).
        window = plan.window
        if plan.adaptive:
            holders = 1 if self._hops else plan.workers
            window = max(window, min(MAX_WINDOW, WINDOW_CHUNKS * holders * size))
        if self._result_bytes:
            # Large results: no more in memory at once than MAX_WINDOW_BYTES, or one per
            # worker, whichever is more, however slowly the consumer takes them.
            fit = int(MAX_WINDOW_BYTES // self._result_bytes)
            return min(window, max(plan.workers, fit))
        # Until a result has been weighed, a chunk per worker.
        return min(window, plan.workers * size)

    def source_failed(self, exc: Exception) -> None:
        """The input raised ``exc``: read no more, raise it once what was read is out."""
        self._exhausted = True
        self._source_error = exc

    def check_source(self) -> None:
        """At the end of the run, raise what the input raised, as a plain loop would."""
        if self._source_error is not None:
            exc, self._source_error = self._source_error, None
            raise exc

    def single(self, index: int) -> Task:
        """A task of the one outstanding item ``index``."""
        return self._task(index, [self._outstanding[index]])

    def accept(
        self, outcomes: list[Outcome]
    ) -> tuple[list[tuple[Task, float]], list[Done | Block]]:
        """Take finished outcomes; return (tasks to submit again, each with the seconds it
        waits first, and what to hand out, in order)."""
        plan, out = self._plan, []
        retries: list[tuple[Task, float]] = []
        outstanding, attempts, buffer = self._outstanding, self._attempts, self._buffer
        if outcomes:
            self._sample(outcomes[0])
        ordered = plan.ordered
        count = 0
        for outcome in outcomes:
            index, status, value, _ = outcome
            done: Done | Block
            if status == BLOCK:
                size = len(value)
                if not self._blocks or (size == 1 and index in attempts):
                    more, dones = self.accept(expand(outcome))
                    retries += more
                    out += dones
                    continue
                count += size
                done = Block(index, value)
            elif status == OK and not attempts:
                count += 1
                size = 1
                done = Done(index, outstanding[index], OK, value, None, 1)
            else:
                count += status != LOST
                size = 1
                final = self._judge(outcome, retries)
                if final is None:
                    continue
                done = final
            if not ordered:
                _forget(outstanding, index, size)
                out.append(done)
            elif index == self._next_out and not buffer:
                _forget(outstanding, index, size)
                out.append(done)
                self._next_out = index + size
            else:
                buffer[index] = done
        self.chunking.finished(count)
        if self._failed_at is not None:
            # Nothing past the failure that ends the run starts again, whatever came first.
            retries = [retry for retry in retries if self.may_start(retry[0])]
        return retries, self._flush(out)

    def _judge(self, outcome: Outcome, retries: list[tuple[Task, float]]) -> Done | None:
        """An outcome other than a first-try success: the item's final :class:`Done`, or None
        if it runs again (added to ``retries`` with the seconds it waits first)."""
        index, status, value, text = outcome
        if status == LOST:
            # Its chunk died with its worker, and which item killed it is unknown: each runs
            # again alone, sent at once, before any new chunk. Not a try: only an item's own
            # crash, alone, counts as one.
            retries.append((self.single(index), 0.0))
            return None
        plan, attempts = self._plan, self._attempts
        tries = attempts.get(index, 1)
        step = judge(plan, index, self._outstanding[index], status, value, text, tries)
        if not isinstance(step, Done):
            attempts[index] = tries + 1
            retries.append((self.single(index), step))
            return None
        attempts.pop(index, None)
        # As in the serial loop, the lowest failing index is the one raised: items before it
        # still run, nothing after it is started any more.
        if plan.ordered and ends_run(plan, step):
            self._failed_at = index if self._failed_at is None else min(index, self._failed_at)
        return step

    def may_start(self, task: Task) -> bool:
        """Whether ``task`` (a retry, or an item run again alone) may start: not if it is past
        the failure that ends the run."""
        return self._failed_at is None or task[1] < self._failed_at

    def _flush(self, out: list[Done | Block]) -> list[Done | Block]:
        """``out`` and what the buffer now hands out after it, up to the run's failure."""
        outstanding, buffer = self._outstanding, self._buffer
        while self._next_out in buffer:
            done = buffer.pop(self._next_out)
            size = len(done.values) if type(done) is Block else 1
            _forget(outstanding, self._next_out, size)
            out.append(done)
            self._next_out += size
        if self.over:
            # The failure is out: the run ends there, as a plain loop's would.
            at = next((i for i, d in enumerate(out) if d.index == self._failed_at), -1)
            out = out[: at + 1]
        return out

    def _sample(self, outcome: Outcome) -> None:
        """Weigh one result of this batch of outcomes (one per batch: it costs ~1 µs)."""
        status, payload = outcome[1], outcome[2]
        if status == BLOCK:
            size = result_bytes(payload[0])
        elif status == OK:
            size = result_bytes(payload)
        else:
            return
        self._result_bytes = size if not self._result_bytes else 0.5 * (self._result_bytes + size)

    def _task(self, first: int, items: list[Any]) -> Task:
        self._next_task += 1
        return (self._next_task, first, items)


def take(source: Iterator[Any], count: int, schedule: Schedule | _LoopSource) -> list[Any]:
    """Up to ``count`` items of ``source``; if it raises, the items read before it, and the
    error is noted with ``schedule``: like a plain loop, the run hands out every item read
    before the input failed, and only then raises what it raised."""
    chunk: list[Any] = []
    try:
        # extend() keeps what it appended before an exception; list(islice()) would lose it.
        chunk.extend(itertools.islice(source, count))
    except Exception as exc:
        schedule.source_failed(exc)
    return chunk


class _LoopSource:
    """The serial loop's note of what its input raised."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Exception | None = None

    def source_failed(self, exc: Exception) -> None:
        self.error = exc


def send(backend: Backend, schedule: Schedule, task: Task) -> list[Outcome]:
    """Submit ``task``; an item the backend cannot send fails alone, as its outcome here.

    A backend raises ``TypeError`` at once for work it cannot send (an item that cannot be
    pickled for a worker process): the task's items are then sent one by one, so that only
    the culprit fails, under ``on_error="collect"`` and ``"skip"`` as any other failure.
    """
    try:
        backend.submit(task)
    except TypeError as exc:
        if len(task[2]) == 1:
            return [failed(task[1], exc)]
        outcomes: list[Outcome] = []
        for index in range(task[1], task[1] + len(task[2])):
            outcomes += send(backend, schedule, schedule.single(index))
        return outcomes
    return []


WINDOW_CHUNKS: Final = 4
# However large chunks grow, at most this many items are read ahead of the consumer.
MAX_WINDOW: Final = 65536
# Nor, as far as result sizes can be told, more than this many bytes of results.
MAX_WINDOW_BYTES: Final = 256 * 2**20


def result_bytes(value: Any, depth: int = 2) -> float:
    """About how many bytes ``value`` holds: exact for bytes, strings and arrays (``nbytes``),
    estimated from the first element for lists, tuples and dicts, shallow otherwise."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    nbytes = getattr(type(value), "nbytes", None)
    if nbytes is not None:
        with contextlib.suppress(Exception):
            return float(value.nbytes)
    size = sys.getsizeof(value, 64)
    if depth and isinstance(value, list | tuple) and value:
        return size + len(value) * result_bytes(value[0], depth - 1)
    if depth and isinstance(value, dict) and value:
        return size + len(value) * result_bytes(next(iter(value.values())), depth - 1)
    return size


def _forget(outstanding: dict[int, Any], index: int, size: int) -> None:
    if size == 1:
        del outstanding[index]
    else:
        for i in range(index, index + size):
            del outstanding[i]


# How often a run that can be cancelled from another thread looks at its cancel flag.
_CANCEL_POLL = 0.05


@overload
def drive(
    items: Iterable[Any],
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = ...,
    start: int = ...,
    blocks: Literal[False] = ...,
) -> Generator[Done, None, None]: ...
@overload
def drive(
    items: Iterable[Any],
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = ...,
    start: int = ...,
    blocks: bool,
) -> Generator[Done | Block, None, None]: ...
# (Long and complex on purpose: the one run loop: send, pace, wait, retry, cancel.)
def drive(  # noqa: C901, PLR0912, PLR0915
    items: Iterable[Any],
    plan: Plan,
    setup: Setup,
    open_backend: Callable[[Setup], Backend],
    *,
    cancel: threading.Event | None = None,
    start: int = 0,
    blocks: bool = False,
) -> Generator[Done | Block, None, None]:
    """Run ``setup.fn`` over ``items`` under ``plan``; account for each item once.

    Yields a :class:`Done` per item, or with ``blocks=True`` a :class:`Block` for consecutive
    items that worked at the first try (and a :class:`Done` for the others).
    """
    backend = open_backend(setup)
    finished = False
    inline = backend.inline if isinstance(backend, Inline) else None
    if inline is not None:
        try:
            yield from _loop(items, plan, inline, cancel, start, blocks)
            finished = True
        finally:
            backend.close(cancel=not finished)
        return
    schedule = Schedule(items, plan, start=start, blocks=blocks)
    poll = _CANCEL_POLL if cancel is not None else None
    unsent: list[Outcome] = []  # items that could not be sent: failed, not yet accepted
    later: list[tuple[float, int, Task]] = []  # retries waiting out their backoff: (due, #, task)
    order = itertools.count()
    pacer = plan.pacer
    try:
        while True:
            paced = 0.0  # seconds until the next start, when the pacer holds calls back
            if pacer is None:
                for task in schedule.tasks():
                    unsent += send(backend, schedule, task)
                while later and later[0][0] <= time.monotonic():
                    task = heapq.heappop(later)[2]
                    if schedule.may_start(task):  # (not if the run failed before it since)
                        unsent += send(backend, schedule, task)
            else:
                # One call a start: retries that are due first, then new items.
                while True:
                    due = bool(later) and later[0][0] <= time.monotonic()
                    if not due and not schedule.has_room():
                        break
                    paced = pacer.delay()
                    if paced > 0:
                        break
                    if due:
                        task = heapq.heappop(later)[2]
                        if not schedule.may_start(task):
                            continue
                    else:
                        tasks = schedule.tasks(most=1)
                        if not tasks:
                            break
                        task = tasks[0]
                    pacer.reserve()  # (now: its delay was 0)
                    unsent += send(backend, schedule, task)
            if schedule.finished:
                finished = not schedule.over
                break
            wait = poll
            if unsent:
                wait = 0.0
            elif later:
                wait = max(0.0, min(later[0][0] - time.monotonic(), poll or math.inf))
            if paced and not unsent:
                wait = min(wait if wait is not None else math.inf, paced)
            outcomes = backend.collect(wait)
            if not outcomes and (later or paced) and not unsent and wait:
                # Only retries waiting out their backoff, or calls their start: a backend
                # with nothing in flight returns at once, so wait here (no longer than the
                # cancel poll).
                soonest = min(
                    later[0][0] - time.monotonic() if later else math.inf,
                    pacer.delay() if pacer is not None and paced else math.inf,
                )
                time.sleep(max(0.0, min(soonest, wait)))
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if unsent:
                outcomes, unsent = unsent + outcomes, []
            retries, dones = schedule.accept(outcomes)
            for task, delay in retries:
                if delay > 0:
                    heapq.heappush(later, (time.monotonic() + delay, next(order), task))
                else:
                    unsent += send(backend, schedule, task)
            yield from dones
    finally:
        backend.close(cancel=not finished)
    if not schedule.over:  # (a run that ended at a failure raises that failure)
        schedule.check_source()


# The plain loop's chunks: grown (doubling) while a chunk takes less than this, so that a
# slow function is handed out item by item and a trivial one runs in C-speed batches.
LOOP_CHUNK_SECONDS: Final = 0.002
LOOP_MAX_CHUNK: Final = 4096


# (Complex on purpose: drive()'s loop inline, a third of its cost per item.)
def _loop(  # noqa: C901, PLR0912
    items: Iterable[Any],
    plan: Plan,
    caller: Caller,
    cancel: threading.Event | None,
    start: int,
    blocks: bool,
) -> Generator[Done | Block, None, None]:
    """The serial model: the plain loop itself, with retries, and nothing run after a failure.

    Exactly what ``for x in items: fn(x)`` calls, in the same order, one at a time. Unless the
    caller fixed ``chunksize``, items are read a chunk ahead, and results handed out a chunk at
    a time (a chunk doubles while it takes under 2 ms and halves when it takes longer); a
    chunk that all works costs no more than ``map(fn, chunk)``.
    """
    pacer = plan.pacer
    source = iter(items)
    index, size = start, plan.chunksize
    note = _LoopSource()
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        chunk = take(source, size, note) if note.error is None else []
        if not chunk:
            if note.error is not None:
                raise note.error
            return
        began = time.perf_counter()
        pos = 0
        while pos < len(chunk):
            if pacer is not None and not pacer.wait(cancel):  # (chunks of one under a rate)
                raise Cancelled
            # Stop at a failure: it is retried at once, and under on_error="raise" nothing
            # after it runs, as in the plain loop.
            for outcome in caller.run_items(index + pos, chunk[pos:] if pos else chunk, stop=True):
                first, status, value, text = outcome
                if status == BLOCK:
                    pos += len(value)
                    if blocks:
                        yield Block(first, value)
                    else:
                        for k, result in enumerate(value):
                            yield Done(first + k, chunk[first - index + k], OK, result, None, 1)
                    continue
                item, tries = chunk[pos], 1
                pos += 1
                # A failure (the fast path, blocks of results, is above): drive()'s rules.
                while True:
                    step = judge(plan, first, item, status, value, text, tries)
                    if isinstance(step, Done):
                        break
                    tries += 1
                    _wait_to_retry(step, cancel, pacer)
                    _, status, value, text = caller.call(first, item)
                yield step
                if ends_run(plan, step):
                    return
        index += len(chunk)
        if not plan.adaptive:
            continue
        if time.perf_counter() - began < LOOP_CHUNK_SECONDS:
            size = min(LOOP_MAX_CHUNK, 2 * size)
        elif size > 1:
            size //= 2


def _wait_to_retry(delay: float, cancel: threading.Event | None, pacer: Pacer | None) -> None:
    """The serial loop before a retry: it waits ``delay`` seconds, as ``time.sleep`` in a retry
    loop would (a cancelled run stops waiting), then, under a rate, for the call's start."""
    if cancel is None:
        time.sleep(delay)
    elif cancel.wait(delay):
        raise Cancelled
    if pacer is not None and not pacer.wait(cancel):
        raise Cancelled
