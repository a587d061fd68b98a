"""pickpool: threads, processes or asyncio? One call over every concurrency model.

``pickpool.map(f, xs)`` returns what ``[f(x) for x in xs]`` returns, run serially, on threads,
on processes or on an event loop, with the same ordering and error semantics on each.
``pickpool.advise(f, xs)`` measures ``f`` on a few items and says which of them to use, and
why; ``model="auto"`` (the default) does that on the first items and runs the rest on it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._advise import Advice, advise
    from ._api import aimap, amap, imap, map, starmap
    from ._bench import BenchResult, BenchRow, bench
    from ._errors import BackendUnavailable, PickpoolError, TaskTimeout, WorkerCrashed
    from ._executor import Executor
    from ._failure import Failure
    from ._results import AsyncResults, Leg, Report, Results
    from ._star import star

# Each public name's module, imported on first use (PEP 562): a worker (a process, a
# sub-interpreter) imports only what running calls needs, not the probe and the cost model
# (in a sub-interpreter on 3.14, all of pickpool took ~0.1 s of each worker's start).
_HOMES = {
    "Advice": "_advise",
    "advise": "_advise",
    "aimap": "_api",
    "amap": "_api",
    "imap": "_api",
    "map": "_api",
    "starmap": "_api",
    "BenchResult": "_bench",
    "BenchRow": "_bench",
    "bench": "_bench",
    "BackendUnavailable": "_errors",
    "PickpoolError": "_errors",
    "TaskTimeout": "_errors",
    "WorkerCrashed": "_errors",
    "Executor": "_executor",
    "Failure": "_failure",
    "AsyncResults": "_results",
    "Leg": "_results",
    "Report": "_results",
    "Results": "_results",
    "star": "_star",
}

__all__ = [
    "Advice",
    "AsyncResults",
    "BackendUnavailable",
    "BenchResult",
    "BenchRow",
    "Executor",
    "Failure",
    "Leg",
    "PickpoolError",
    "Report",
    "Results",
    "TaskTimeout",
    "WorkerCrashed",
    "advise",
    "aimap",
    "amap",
    "bench",
    "imap",
    "map",
    "star",
    "starmap",
]

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pickpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # (found directly from now on)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
