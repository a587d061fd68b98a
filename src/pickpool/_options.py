"""Checking the options of ``map``/``imap``/``amap`` and filling in defaults.

Every check runs before any work starts, so bad input costs nothing and loses nothing.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import _machine
from ._backends import EXTRA_MODELS, MODELS, TRAITS, traits
from ._driver import Plan
from ._inner import InnerThreads
from ._pace import Pacer

ON_ERROR: Final = ("raise", "collect", "skip")
ALL_MODELS: Final = ("auto", *MODELS, *EXTRA_MODELS)

# Process chunks: about 4 per worker over the input (as multiprocessing.Pool.map does), never
# so large that one chunk holds the tail, never smaller than 1.
CHUNKS_PER_WORKER: Final = 4
MAX_CHUNK: Final = 256
CHUNK_UNKNOWN_LENGTH: Final = 32
# Each worker may have this many chunks' worth of items in flight or waiting to be handed out.
WINDOW_CHUNKS_PER_WORKER: Final = 4


def default_workers(model: str, *, is_async: bool) -> int:
    """Workers when none are given: cores for CPU work, more for threads that wait.

    ``serial``: 1. ``processes``: the usable cores (affinity and cgroup quota). ``threads``:
    8 per usable core, at most 64. ``asyncio``: 1024 concurrent coroutines for an async
    function; for a plain function, the thread count of ``threads``.
    """
    return traits(model).default_workers(_machine.cores(), is_async)


def default_chunksize(model: str, workers: int, length: int | None) -> int:
    """Items per chunk when none is given: 1, except where each hand-off is costly to hide."""
    if not traits(model).batched:
        return 1
    if length is None:
        return CHUNK_UNKNOWN_LENGTH
    return max(1, min(MAX_CHUNK, math.ceil(length / (CHUNKS_PER_WORKER * workers))))


def positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def worker_options(
    model: object, initializer: object, initargs: object, max_tasks_per_child: object
) -> dict[str, Any]:
    """``initializer``, ``initargs`` and ``max_tasks_per_child`` checked, as Setup's fields."""
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
    if not isinstance(initargs, tuple | list):
        raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
    known = isinstance(model, str) and model in TRAITS
    if initializer is not None and known and not traits(str(model)).initializer:
        raise ValueError(
            f"initializer is not supported under model={model!r}: set up each worker "
            "another way (a dask WorkerPlugin), or use model='processes' or 'threads'"
        )
    tasks_cap = positive_int("max_tasks_per_child", max_tasks_per_child)
    if tasks_cap is not None and model != "auto" and not (known and traits(str(model)).recycles):
        raise ValueError(
            f"max_tasks_per_child is for worker processes, not model={model!r}: use "
            "model='processes' (or 'auto', where it applies if auto chooses processes)"
        )
    return {
        "initializer": initializer,
        "initargs": tuple(initargs),
        "max_tasks_per_child": tasks_cap,
    }


def check_fn(fn: object) -> None:
    if not callable(fn):
        raise TypeError(
            f"fn must be a callable that takes one item, not {type(fn).__name__}; "
            "for several arguments per item use pickpool.star(fn)"
        )


# Seconds before a failed item's first retry, unless the caller says otherwise.
DEFAULT_BACKOFF = 0.05


# (Long on purpose: every option of a concrete model checked and defaulted.)
def make_plan(
    *,
    model: str,
    is_async: bool,
    length: int | None,
    workers: object,
    chunksize: object,
    ordered: object,
    timeout: object,
    retries: object,
    on_error: object,
    backoff: object = 0.0,
    max_concurrency: object = None,
    max_rate: object = None,
) -> Plan:
    """Check the user's options; return the :class:`Plan` for a concrete (non-auto) model."""
    if model not in MODELS and model not in EXTRA_MODELS:
        raise ValueError(f"unknown model {model!r}; use one of {', '.join(map(repr, ALL_MODELS))}")
    n_workers = positive_int("workers", workers)
    size = positive_int("chunksize", chunksize)
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, not {ordered!r}")
    if on_error not in ON_ERROR:
        raise ValueError(
            f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, not {on_error!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
        raise TypeError(f"retries must be a whole number, not {type(retries).__name__}")
    retries = int(retries)
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    limit = positive_seconds("timeout", timeout, optional=True)
    wait = 0.0 if backoff == 0 else positive_seconds("backoff", backoff)
    cap = positive_int("max_concurrency", max_concurrency)
    if cap is not None and n_workers is not None and n_workers > cap:
        raise ValueError(
            f"workers={n_workers} is more than max_concurrency={cap}: pass one or the other"
        )
    if limit is not None and size is not None and size > 1:
        raise ValueError(
            f"timeout applies to each item, so it needs chunksize=1 (got chunksize={size}); "
            "leave chunksize unset"
        )
    rate = positive_rate(max_rate)
    if rate is not None and size is not None and size > 1:
        raise ValueError(
            f"max_rate spaces out each call's start, so it needs chunksize=1 (got "
            f"chunksize={size}); leave chunksize unset"
        )
    kind = traits(model)
    backend = model
    if limit is not None and kind.with_timeout is not None:
        # The caller's own thread cannot be interrupted: a one-thread pool can be abandoned.
        backend = kind.with_timeout
    # serial is one at a time whatever `workers` says, so that switching a call to serial to
    # debug it needs no other change.
    n_workers = 1 if kind.inline else n_workers or default_workers(model, is_async=is_async)
    if cap is not None:
        n_workers = min(n_workers, cap)
    # Chunks not given are fitted to the measured pace as the run goes (a timeout is per item).
    one_by_one = limit is not None or rate is not None
    adaptive = size is None and not one_by_one
    size = 1 if one_by_one else size or default_chunksize(model, n_workers, length)
    window = size if kind.inline else WINDOW_CHUNKS_PER_WORKER * n_workers * size
    if (kind.silent_starts and limit is not None) or rate is not None:
        # Their futures do not say when a task starts: with no more in flight than there are
        # workers, none waits in a queue while its timeout runs. Under a rate, what is sent
        # starts at once, so that spacing the sends spaces the starts.
        window = n_workers
    return Plan(
        model=backend,
        workers=n_workers,
        chunksize=size,
        window=window,
        ordered=ordered,
        timeout=limit,
        retries=int(retries),
        fail_fast=on_error == "raise",
        adaptive=adaptive,
        length=length,
        backoff=wait or 0.0,
        pacer=None if rate is None else Pacer.per_second(rate),
        hops=traits(backend).hops,
    )


def positive_rate(value: object) -> float | None:
    """``max_rate`` checked: calls per second, a positive finite number, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"max_rate must be calls per second (a number) or None, not {value!r}")
    rate = float(value)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"max_rate must be a positive number of calls per second, got {value}")
    return rate


def positive_seconds(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` as a positive, finite number of seconds, or a TypeError/ValueError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        or_none = " or None" if optional else ""
        raise TypeError(f"{name} must be seconds (a number){or_none}, not {type(value).__name__}")
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return seconds


def length_hint(items: Any) -> int | None:
    """``len(items)`` where it exists, without consuming anything."""
    try:
        return len(items)
    except TypeError:
        return None


@dataclass(frozen=True, slots=True)
class Wishes:
    """The caller's own ``map`` options, checked: what every phase and the rest must honour."""

    workers: int | None = None
    chunksize: int | None = None
    timeout: float | None = None
    retries: int = 0
    on_error: str = "raise"
    ordered: bool = True
    fresh_workers: bool = False
    inner_threads: InnerThreads = None
    backoff: float = 0.0
    max_concurrency: int | None = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int | None = None
    # ``max_rate``, as the one pacer every phase of the run shares.
    pacer: Pacer | None = None

    def workers_setup(self) -> dict[str, Any]:
        """What each new worker is set up with, for every :class:`Setup` of the run."""
        return {
            "initializer": self.initializer,
            "initargs": self.initargs,
            "max_tasks_per_child": self.max_tasks_per_child,
        }

    def plan(
        self,
        model: str,
        *,
        is_async: bool,
        workers: int,
        chunksize: int | None,
        adaptive: bool = False,
        length: int | None = None,
    ) -> Plan:
        """The plan for running some of the items on ``model``, with these options.

        ``adaptive``: chunks start at ``chunksize`` and follow the measured pace, unless the
        caller fixed the chunk size; ``length``: how many items the plan runs, if known.
        """
        # Each item on its own: its timeout runs from its start, its start is paced.
        one_by_one = self.timeout is not None or self.pacer is not None
        plan = make_plan(
            model=model,
            is_async=is_async,
            length=length,
            workers=workers,
            chunksize=None if one_by_one else chunksize,
            ordered=self.ordered,
            timeout=self.timeout,
            retries=self.retries,
            on_error=self.on_error,
            backoff=self.backoff,
            max_concurrency=self.max_concurrency,
            max_rate=None if self.pacer is None else self.pacer.rate,
        )
        return dataclasses.replace(
            plan,
            adaptive=adaptive and not one_by_one and self.chunksize is None,
            pacer=self.pacer,
        )
