"""A run's bookkeeping, free of I/O and clocks: :class:`Schedule`, and what it hands out.

The schedule reads the input lazily (a :class:`Source`), cuts it into chunks
(``_chunks.Chunking`` sizes them), keeps a bounded window of items in flight, puts outcomes
back in input order (or not), decides each item's fate by one rule book (:func:`judge`: final,
or retried after a backoff), has the items of a chunk that died with its worker run again one
by one, and ends the run at a failure under ``on_error="raise"``. It hands out a :class:`Done`
per item, or a :class:`Block` for a run of results that all worked at the first try.

``_step.Step`` wraps it with time (backoff, pace) for every loop that runs a plan.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from . import _log
from ._chunks import Chunking
from ._cursor import Items, Source
from ._errors import PickpoolError, TaskTimeout, WorkerCrashed
from ._plan import Plan
from ._task import BLOCK, ERROR, FATAL, LOST, OK, Outcome, Task, expand


@dataclass(slots=True)
class Done:
    """One item's final outcome, as the loop hands it to the caller.

    Not frozen: one is made per item, and a frozen dataclass's ``__init__`` costs 3x more.
    """

    index: int
    item: Any
    status: int
    value: Any  # the result, or the exception
    traceback: str | None
    attempts: int


@dataclass(slots=True)
class Block:
    """The results of consecutive items from ``index`` on, each of which worked at its first try.

    Handed out instead of one :class:`Done` per item when the consumer asks for blocks: the
    common case then costs the loop a few operations per chunk rather than per item.
    """

    index: int
    values: list[Any]


# The longest wait before a retry, however many came before it.
MAX_BACKOFF: Final = 30.0


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before try number ``attempt`` (2 for the first retry): full jitter."""
    if backoff <= 0:
        return 0.0
    return random.uniform(0.0, min(MAX_BACKOFF, backoff * 2 ** min(attempt - 2, 40)))


def judge(
    plan: Plan, index: int, item: Any, status: int, value: Any, text: str | None, tries: int
) -> Done | float:
    """The run's rules for item ``index``'s outcome after ``tries`` tries: its final
    :class:`Done`, or the seconds to wait before it is tried again (a retry, logged).

    A ``FATAL`` outcome is raised (unless the plan hands it out as the item's), a crash or a
    timeout is logged, a failure is retried while ``plan.retries`` allow. What failed is always
    an exception: one that came back from a worker as something else is said to be so.
    """
    if status in (ERROR, FATAL) and not isinstance(value, BaseException):
        value, status = _not_an_exception(index, value), ERROR
    if status == FATAL and plan.fatal_ends_run:
        raise value
    if status == ERROR:
        if isinstance(value, (TaskTimeout, WorkerCrashed)):
            _log.failed_hard(index, value)
        if tries <= plan.retries:
            delay = backoff_delay(plan.backoff, tries + 1)
            _log.retrying(index, tries, plan.retries, value, delay)
            return delay
    return Done(index, item, status, value, text, tries)


def _not_an_exception(index: int, value: object) -> PickpoolError:
    """What item ``index`` failed with, when what came back in place of its exception is not
    one (its ``__reduce__`` rebuilds something else)."""
    try:
        shown = repr(value)
    except Exception:
        shown = f"<{type(value).__qualname__}>"
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return PickpoolError(
        f"item {index} raised an exception that came back from its worker as a "
        f"{type(value).__qualname__} ({shown}), not an exception: its __reduce__ rebuilds "
        "something else; make __reduce__ return the exception's own class and arguments, or "
        "use model='threads', which does not pickle it"
    )


def ends_run(plan: Plan, done: Done) -> bool:
    """Whether nothing after ``done``'s item may start any more: under ``on_error="raise"``,
    a final failure ends the run, as it ends a plain loop (the items before it still run)."""
    return plan.fail_fast and done.status == ERROR


class _Outstanding:
    """Items submitted and not yet handed out, kept a chunk at a time: a chunk that all worked
    costs a few operations here, not a few per item."""

    __slots__ = ("_chunks", "_dead", "_firsts", "_left", "count")

    def __init__(self) -> None:
        self._chunks: dict[int, list[Any]] = {}  # a chunk's first index -> its items
        self._left: dict[int, int] = {}  # a chunk's first index -> its items still out
        # The chunks' first indices, in order; those of chunks all handed out stay until
        # they are more than half (so that a block over many small chunks costs no shuffling).
        self._firsts: list[int] = []
        self._dead = 0
        self.count = 0  # items out

    def add(self, first: int, items: list[Any]) -> None:
        self._chunks[first] = items
        self._left[first] = len(items)
        if not self._firsts or first > self._firsts[-1]:
            self._firsts.append(first)
        else:
            bisect.insort(self._firsts, first)
        self.count += len(items)

    def _first(self, index: int) -> int:
        """The first index of the chunk that holds item ``index``."""
        return self._firsts[bisect.bisect_right(self._firsts, index) - 1]

    def item(self, index: int) -> Any:
        first = self._first(index)
        return self._chunks[first][index - first]

    def forget(self, index: int, size: int) -> None:
        """Items ``index`` to ``index + size - 1`` are handed out."""
        self.count -= size
        firsts, chunks, left = self._firsts, self._chunks, self._left
        at = bisect.bisect_right(firsts, index) - 1
        while size:
            first = firsts[at]
            at += 1
            items = chunks.get(first)
            if items is None:
                continue  # a chunk already all handed out
            n = min(size, first + len(items) - index)
            left[first] -= n
            if not left[first]:
                del chunks[first], left[first]
                self._dead += 1
            index += n
            size -= n
        if self._dead > 64 and 2 * self._dead > len(firsts):
            self._firsts = [f for f in firsts if f in chunks]
            self._dead = 0

    def cut(self, index: int) -> list[Any]:
        """The items from ``index`` to the end of its chunk, no longer out (they did not run)."""
        first = self._first(index)
        items = self._chunks[first]
        rest = items[index - first :]
        self._chunks[first] = items[: index - first]
        self._left[first] -= len(rest)
        self.count -= len(rest)
        if not self._left[first]:
            del self._chunks[first], self._left[first]
            self._dead += 1
        return rest


# Each worker may have this many chunks' worth of items in flight or waiting to be handed out.
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


# (Long on purpose: the run's bookkeeping: window, chunks, order, retries, fail-fast.)
class Schedule:
    """What to submit next and what to hand out, given the outcomes so far.

    ``source``: the items (an iterable, or a :class:`Source`); ``start``: the index of the
    first, when an earlier run already took the ones before it (``model="auto"`` continues
    where its probe stopped). ``blocks``: hand out a :class:`Block` for consecutive results
    that all worked at the first try; otherwise one :class:`Done` per item.
    """

    def __init__(
        self, source: Iterable[Any] | Source, plan: Plan, *, start: int = 0, blocks: bool = False
    ) -> None:
        self.source = source if isinstance(source, Source) else Items(source)
        self._plan = plan
        self._blocks = blocks
        self._start = start
        self._next_in = start  # the index of the next item read
        self._outstanding = _Outstanding()  # submitted, not yet handed out
        self._attempts: dict[int, int] = {}  # only items tried more than once
        self._buffer: dict[int, Done | Block] = {}  # ordered: finished, waiting for earlier
        self._next_out = start
        self._next_task = 0
        self._exhausted = False
        self._failed_at: int | None = None
        # Items an inline chunk did not run (it stopped at a failure): read before the source.
        self._unread: list[Any] = []
        self._result_bytes = 0.0  # the size of one result, estimated from samples
        self.chunking = Chunking(plan)

    @property
    def over(self) -> bool:
        """The failure that ends the run is handed out: the run ends there, what runs is
        abandoned."""
        return self._failed_at is not None and self._next_out > self._failed_at

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing left to submit, or the run's failure handed out."""
        return self.over or (
            not self._outstanding.count
            and ((self._exhausted and not self._unread) or self._failed_at is not None)
        )

    @property
    def outstanding(self) -> int:
        """Items submitted and not yet handed out (some may wait to be tried again)."""
        return self._outstanding.count

    def tasks(self, most: int | None = None) -> list[Task]:
        """Chunks to submit now: as many as the window has room for (at most ``most``)."""
        tasks: list[Task] = []
        while len(tasks) != most and (room := self._room()):
            chunk = self._read(room)
            if not chunk:
                break
            first = self._next_in
            self._next_in += len(chunk)
            self._outstanding.add(first, chunk)
            tasks.append(self._task(first, chunk))
        if tasks:
            self.chunking.started()
        return tasks

    def _read(self, count: int) -> list[Any]:
        if self._unread:
            chunk, self._unread = self._unread[:count], self._unread[count:]
            return chunk
        chunk = self.source.take(count)
        if self.source.ended:
            self._exhausted = True
        return chunk

    def has_room(self) -> bool:
        """Whether :meth:`tasks` would give a chunk now (unless the input has none yet)."""
        return self._room() > 0

    def _room(self) -> int:
        """How many items the next chunk takes, or 0 if none is to be sent now."""
        if (self._exhausted and not self._unread) or self._failed_at is not None:
            return 0
        size = self.chunking.next(self._next_in - self._start)
        window = self._window(size)
        room = window - self._outstanding.count
        return 0 if room < min(size, window) else min(size, room)

    def _window(self, size: int) -> int:
        """Items in flight at most, with chunks of ``size``."""
        plan = self._plan
        if plan.inline:
            return size  # one chunk at a time, run where it is read
        # The window holds a few chunks per worker, whatever size chunks have grown to
        # (asyncio's workers are coroutines, fed by hops, not chunks).
        window = plan.window
        if plan.adaptive:
            holders = 1 if plan.hops else plan.workers
            window = max(window, min(MAX_WINDOW, WINDOW_CHUNKS * holders * size))
        if self._result_bytes:
            # Large results: no more in memory at once than MAX_WINDOW_BYTES, or one per
            # worker, whichever is more, however slowly the consumer takes them.
            fit = int(MAX_WINDOW_BYTES // self._result_bytes)
            return min(window, max(plan.workers, fit))
        # Until a result has been weighed, a chunk per worker.
        return min(window, plan.workers * size)

    def check_source(self) -> None:
        """At the end of the run, raise what the input raised, as a plain loop would."""
        error = self.source.failure()
        if error is not None:
            raise error

    def single(self, index: int) -> Task:
        """A task of the one outstanding item ``index``."""
        return self._task(index, [self._outstanding.item(index)])

    def unrun(self, index: int) -> None:
        """Item ``index`` and those after it in its chunk did not run (an inline chunk stopped at
        a failure before them): they are read again next, before the rest of the input."""
        self._unread = self._outstanding.cut(index) + self._unread
        self._next_in = index

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
                done = Done(index, outstanding.item(index), OK, value, None, 1)
            else:
                count += status != LOST
                size = 1
                final = self._judge(outcome, retries)
                if final is None:
                    continue
                done = final
            if not ordered:
                outstanding.forget(index, size)
                out.append(done)
            elif index == self._next_out and not buffer:
                outstanding.forget(index, size)
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
        step = judge(plan, index, self._outstanding.item(index), status, value, text, tries)
        if not isinstance(step, Done):
            attempts[index] = tries + 1
            retries.append((self.single(index), step))
            return None
        attempts.pop(index, None)
        # As in the plain loop, the lowest failing index is the one raised: items before it
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
            outstanding.forget(self._next_out, size)
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
        self.chunking.weighed(self._result_bytes)

    def _task(self, first: int, items: list[Any]) -> Task:
        self._next_task += 1
        return (self._next_task, first, items)
