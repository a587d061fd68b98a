"""Every rule about chunks: how many items go to a worker in one hand-off.

A hand-off has a price: a queue's wake-up for threads (~15 µs), a pipe's round trip and
pickling for processes (~25 µs and up), a remote future for dask (~1 ms). A chunk of several
items pays it once. Too large a chunk holds the tail (one worker still busy while the others
idle) and delays the first results. The rules, each used by one part of pickpool:

* :func:`first`: a run's first chunk, before anything is measured (the driver, ``bench``);
* :func:`advised` and :func:`for_round_trip`: the chunk the cost model predicts with, from the
  probe's time per call (each model's prediction, in its backend module);
* :class:`Chunking`: chunks fitted to the measured pace as the run goes (the schedule);
* :func:`one_by_one`: a timeout or a rate means chunks of one item.
"""

from __future__ import annotations

import math
import time
from typing import Final

from ._plan import Plan

# A run's first chunk, where hand-offs are costly: about 4 chunks per worker over the input
# (as multiprocessing.Pool.map does), never so large that one chunk holds the tail.
CHUNKS_PER_WORKER: Final = 4
FIRST_MAX: Final = 256
FIRST_UNKNOWN_LENGTH: Final = 32

# Chunks fitted to the pace: how long a worker's chunk should take (long enough to hide the
# hand-off, ~0.1 ms for threads and processes; short enough that every worker is busy until
# near the end), and the largest chunk. (joblib's auto batching aims at 0.2-2 s batches.)
CHUNK_SECONDS: Final = 0.005
MAX_CHUNK: Final = 8192
# An asyncio chunk is only a hop between threads, its items run concurrently: hop this often.
HOP_SECONDS: Final = 0.001
MAX_HOP: Final = 256
# Near the end, chunks shrink so that the last round splits over every worker at least twice.
TAIL_SPLIT: Final = 2
# The plain loop's chunks (serial) cost no hand-off, only the results' hand-out: they double
# while a chunk takes less than this, so that a slow function runs item by item and a trivial
# one in C-speed batches, and halve when a chunk takes longer.
INLINE_SECONDS: Final = 0.002
INLINE_MAX: Final = 4096

# The cost model's chunks: a process chunk should run long enough that its trip (~25 µs) is
# lost in it; a thread's hand-off costs a tenth of that. Never more bytes than this in one.
COSTLY_HANDOFF_SECONDS: Final = 5e-3
CHEAP_HANDOFF_SECONDS: Final = 0.5e-3
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024
# A dask task should take this many round trips to the cluster, so that the trip is lost in it.
ROUND_TRIPS_PER_CHUNK: Final = 20


def one_by_one(*, timeout: float | None, rate: float | None) -> bool:
    """Whether each item must go alone: a timeout runs from each item's own start, and a rate
    spaces out each call's start."""
    return timeout is not None or rate is not None


def first(*, batched: bool, workers: int, length: int | None, most: int | None = None) -> int:
    """A run's first chunk: 1, except where each hand-off is costly to hide (``batched``).

    ``most``: a worker runs at most that many items before it is replaced
    (``max_tasks_per_child``), so no chunk is larger.
    """
    if not batched:
        return 1
    if length is None:
        size = FIRST_UNKNOWN_LENGTH
    else:
        size = max(1, min(FIRST_MAX, math.ceil(length / (CHUNKS_PER_WORKER * workers))))
    return size if most is None else min(size, most)


def advised(*, target: float, wall: float, items: int, workers: int, item_bytes: int) -> int:
    """The chunk a prediction assumes: about ``target`` seconds of calls of ``wall`` seconds,
    at least 4 per worker over ``items``, and at most :data:`MAX_CHUNK_BYTES` of items and
    results (``item_bytes`` each)."""
    size = math.ceil(target / max(wall, 1e-7))
    size = min(size, math.ceil(items / (CHUNKS_PER_WORKER * workers)))
    if item_bytes:
        size = min(size, MAX_CHUNK_BYTES // item_bytes)
    return max(1, size)


def for_round_trip(*, round_trip: float, wall: float, items: int, workers: int) -> int:
    """The chunk of a remote task: :data:`ROUND_TRIPS_PER_CHUNK` round trips of work, at
    least one chunk per worker over ``items``."""
    size = math.ceil(ROUND_TRIPS_PER_CHUNK * round_trip / max(wall, 1e-7))
    return max(1, min(size, -(-items // workers)))


class Chunking:
    """The next chunk's size: fixed, or fitted to the measured pace, and smaller at the tail.

    Pooled models: the pace is measured where it is felt, in items handed back per second over
    the last stretch of the run, so it includes every overhead, start-up and consumer alike;
    each chunk then aims at :data:`CHUNK_SECONDS` of one worker's time (hops: at
    :data:`HOP_SECONDS` of the loop's). A size at most doubles per step, so one fast chunk
    cannot make the next enormous; it shrinks at once when the pace drops.

    The inline model (serial) times each chunk itself: it doubles while a chunk takes under
    :data:`INLINE_SECONDS` and halves when one takes longer.

    Until a result has come back, chunks fitted to the pace are of one item: a result may be
    large (40 MB each, 8 of them in a first chunk would be 320 MB at once, and the bar would
    not move until they all came back). Once results are weighed, no chunk holds more than
    :data:`MAX_CHUNK_BYTES` of them.
    """

    __slots__ = ("_began", "_bytes", "_done", "_most", "_plan", "_rate", "size")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.size = plan.chunksize
        self._began = 0.0
        self._done = 0
        self._rate = 0.0  # items per second, smoothed
        self._bytes = 0.0  # a result's size, as weighed (0: none has come back yet)
        most = INLINE_MAX if plan.inline else MAX_HOP if plan.hops else MAX_CHUNK
        self._most = min(most, plan.most_per_chunk or most)

    def started(self) -> None:
        """A chunk was handed out."""
        if self._plan.inline or not self._began:
            self._began = time.perf_counter()

    def finished(self, count: int) -> None:
        """``count`` more items came back: update the pace and the chunk size."""
        plan = self._plan
        if not plan.adaptive or not count:
            return
        now = time.perf_counter()
        elapsed = now - self._began
        if plan.inline:
            if elapsed < INLINE_SECONDS:
                self.size = min(self._most, 2 * self.size)
            elif self.size > 1:
                self.size //= 2
            return
        self._done += count
        # Judge over a few chunks' worth, not one outcome: outcomes of threads come singly.
        if elapsed < 2 * CHUNK_SECONDS:
            return
        rate = self._done / elapsed
        self._rate = rate if not self._rate else 0.5 * (self._rate + rate)
        self._began, self._done = now, 0
        ideal = self._rate * (HOP_SECONDS if plan.hops else CHUNK_SECONDS / plan.workers)
        self.size = max(1, min(self._most, 2 * self.size, round(ideal)))

    def weighed(self, result_bytes: float) -> None:
        """A result (a typical one) holds about ``result_bytes``."""
        self._bytes = result_bytes

    def next(self, taken: int) -> int:
        """The size of the next chunk, ``taken`` items having been read so far."""
        size = self.size
        plan = self._plan
        if plan.adaptive and size > 1 and not plan.inline:
            if not self._bytes:
                return 1
            size = min(size, max(1, int(MAX_CHUNK_BYTES // self._bytes)))
        # (Hops need no split at the tail: their items all wait in one place, for the next
        # free coroutine, whichever hop brought them; nor does the plain loop.)
        if plan.length is not None and plan.adaptive and not plan.hops and not plan.inline:
            left = plan.length - taken
            size = min(size, max(1, -(-left // (TAIL_SPLIT * plan.workers))))
        return size
