"""What one run (or one phase of an auto run) is: :class:`Plan`, the loop's whole input.

``_options`` derives a plan from the caller's checked options for one model; the loop
(``_step``, ``_driver``, ``_aio``) follows it and checks nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._pace import Pacer


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the loop needs to know, already checked and defaulted by ``_options``."""

    model: str  # the backend that runs it
    workers: int
    chunksize: int  # the first chunks' size; the size of every chunk unless ``adaptive``
    window: int  # items submitted but not yet handed to the consumer, at most
    ordered: bool
    timeout: float | None
    retries: int
    fail_fast: bool  # on_error="raise": start nothing after the first final failure
    # Resize chunks to the measured pace (see ``_chunks.Chunking``); the input's length, if known.
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
    # The model runs each chunk in the caller's thread (serial): a chunk stops at a failure,
    # which is retried in place before anything after it runs, as in a plain loop.
    inline: bool = False
    # What a BaseException such as SystemExit, raised by the function, does: end the run and
    # reach the caller (map, as a plain loop would), or stand as the item's outcome (the
    # Executor, whose futures carry whatever their call raised).
    fatal_ends_run: bool = True
    # A worker runs at most this many items before it is replaced (``max_tasks_per_child``):
    # no chunk is larger.
    most_per_chunk: int | None = None
