"""pickpool: threads, processes or asyncio? One call over every concurrency model.

``pickpool.map(f, xs)`` returns what ``[f(x) for x in xs]`` returns, run serially, on threads,
on processes or on an event loop, with the same ordering and error semantics on each.
``pickpool.advise(f, xs)`` measures ``f`` on a few items and says which of them to use, and
why; ``model="auto"`` (the default) does that on the first items and runs the rest on it.
"""

from ._advise import Advice, advise
from ._api import aimap, amap, imap, map, starmap
from ._bench import BenchResult, BenchRow, bench
from ._errors import BackendUnavailable, PickpoolError, TaskTimeout, WorkerCrashed
from ._executor import Executor
from ._failure import Failure
from ._results import AsyncResults, Leg, Report, Results
from ._star import star

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
